"""
yadiskpush: a Twisted client for Yandex.Disk push notifications.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"
