"""
wokkel subprotocol handlers: one module per thing the server asks of us.

``wokkel.ping`` cannot be imported on current Twisted (its ``data_form``
import needs ``twisted.python.compat._PY3``, removed from Twisted; wokkel
issue #31, fix never released), and ``wokkel.generic.VersionHandler`` has no
``<os>``. So the ping and version handlers are small classes of our own,
modelled on wokkel's, and we import only ``wokkel.subprotocols`` and
``wokkel.generic`` (for ``FallbackHandler``).
"""
