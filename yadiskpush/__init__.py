"""
yadiskpush: a Twisted client for Yandex.Disk push notifications.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"

from yadiskpush.accounts import AccountsChange, readAccounts  # noqa: E402
from yadiskpush.errors import (  # noqa: E402
    AuthenticationFailed,
    ConfigurationError,
    ServiceStopped,
    YaDiskPushError,
)
from yadiskpush.fleet import PushFleet  # noqa: E402
from yadiskpush.handlers.push import PushHandler  # noqa: E402
from yadiskpush.logs import setLogLevel  # noqa: E402
from yadiskpush.notification import Change, Notification, PushChild  # noqa: E402
from yadiskpush.secret import Secret  # noqa: E402
from yadiskpush.service import PushService  # noqa: E402
from yadiskpush.settings import Settings  # noqa: E402

__all__ = [
    "AccountsChange",
    "AuthenticationFailed",
    "Change",
    "ConfigurationError",
    "Notification",
    "PushChild",
    "PushFleet",
    "PushHandler",
    "PushService",
    "Secret",
    "ServiceStopped",
    "Settings",
    "YaDiskPushError",
    "readAccounts",
    "setLogLevel",
    "__version__",
]
