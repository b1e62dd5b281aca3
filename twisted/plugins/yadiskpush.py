"""twistd plugin: ``twistd yadiskpush``; everything else is in yadiskpush.cli."""

from twisted.application.service import ServiceMaker

yadiskpush = ServiceMaker(
    "yadiskpush",
    "yadiskpush.cli.options",
    "Yandex.Disk push notification client (XMPP)",
    "yadiskpush",
)
