"""twistd plugin: ``twistd yadiskpush``. Everything else is in yadiskpush.options."""

from twisted.application.service import ServiceMaker

yadiskpush = ServiceMaker(
    "yadiskpush",
    "yadiskpush.options",
    "Yandex.Disk push notification client (XMPP)",
    "yadiskpush",
)
