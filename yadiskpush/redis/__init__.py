"""
A small Redis client of our own: the RESP2 wire protocol (:mod:`.protocol`),
the address a ``redis://`` URL names (:mod:`.address`) and a connection that
comes back by itself (:mod:`.connection`).

Why not a library: the Redis Streams sink needs a handful of commands
(AUTH, SELECT, PING, XADD, XRANGE, XREVRANGE), full control over when a
reply is *unknown* (a connection lost with commands in flight), TLS that
verifies the host dialled with the same contexts as the XMPP connection,
and a quiet reconnect loop on the reactor's clock. txredisapi 1.6.0 logs
through ``twisted.python.log`` on every reconnect attempt, builds TLS from a
``ClientContextFactory`` that does not check the host name, and hides which
commands were in flight when a connection dropped; a hundred lines of RESP
are easier to trust than working around all three.
"""
