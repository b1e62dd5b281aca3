"""
From a received push to its acknowledgement: the per-connection pipeline
(:mod:`.pipeline`) hands each push to every sink (:mod:`.sinks`) and acks it
only once every sink has durably taken it.
"""
