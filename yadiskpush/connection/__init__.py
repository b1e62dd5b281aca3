"""
One connection attempt, from TCP connect to an open session: where to dial
(:mod:`.endpoint`), the TLS it verifies (:mod:`.tls`), the facts of the
attempt (:mod:`.attempt`), and the initializer chain that runs on it
(:mod:`.authenticator`, :mod:`.sasl`, :mod:`.compression`, :mod:`.stream`).
"""
