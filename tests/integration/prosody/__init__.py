"""Prosody as a second, independent test server: harness and Lua modules."""
