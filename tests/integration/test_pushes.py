"""
Issue 4, end to end: pushes from the local server reach the API and the
sinks intact, in order, acknowledged exactly once and only after delivery.

Everything is real: loopback TLS to the local server, the client's whole
stack, the JSON Lines file, and child processes for ``--exec``. Nothing
sleeps. To show that something did *not* happen (an ack held back, an IQ
left unanswered), a test sends a ping after it and waits for the pong: the
client answers stanzas in order over one TCP stream, so whatever it sent
before the pong has reached the server by then.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Generator, Sequence
from typing import Any, cast

from twisted.internet import defer, reactor
from twisted.logger import ILogObserver, Logger
from twisted.words.xish import domish
from wokkel.generic import parseXml

from tests.integration.support import LOGIN, LocalServerTestCase
from tests.test_sinks_execute import LogRecorder, isRunEnd
from yadiskpush.application import PushApplication
from yadiskpush.delivery.sinks import ExecSink, JSONLinesSink, Sink
from yadiskpush.localserver import LocalServer, NoAnswer, ServerSession
from yadiskpush.notification import NS_DISK_PUSH, Notification, PushChild
from yadiskpush.service import PushService
from yadiskpush.settings import Settings

Steps = Generator[defer.Deferred[Any], Any, None]

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

#: A shape of child elements no schema could foresee: other namespaces,
#: a namespaced attribute, nesting, mixed content, escapes and Cyrillic.
CHILDREN = (
    "<op xmlns='urn:example:ops' type='changed' "
    "key='disk:/Фото &amp; видео/{n} &lt;1&gt;.jpg'>"
    "<meta xmlns:m='urn:example:meta' m:size='{n}' note='&quot;a&quot; &amp; b'>"
    "Текст &amp; text<deep xmlns='urn:example:deep' level='3'>глубоко</deep>"
    " tail</meta></op>"
    "<op type='deleted' key='disk:/Старое/{n}.txt'/>"
    "<future-thing xmlns='urn:example:future'/>"
)


def attributesFor(number: int) -> dict[str, str]:
    """The attributes of push ``number``, some of them unknown today."""
    return {
        "t": "diff",
        "uid": "4242",
        "old": str(number),
        "new": str(number + 1),
        "path": 'disk:/Документы/a & b <c> "d"',
        "x-future": "значение",
    }


def childrenFor(number: int) -> str:
    return CHILDREN.format(n=number)


# -- comparing what was sent with what arrived -------------------------------


def splitTag(tag: str) -> tuple[str | None, str]:
    """ElementTree's ``{uri}name`` as ``(uri, name)``."""
    if tag.startswith("{"):
        uri, _, name = tag[1:].partition("}")
        return uri, name
    return None, tag


def treeShape(element: ET.Element) -> dict[str, Any]:
    """
    An element as parsed by ElementTree, independently of domish, in the
    form ``Notification.toJSON()`` gives children: the element's own text is
    all its character data outside its children.
    """
    uri, name = splitTag(element.tag)
    text = (element.text or "") + "".join(c.tail or "" for c in element)
    return {
        "name": name,
        "uri": uri,
        "attributes": dict(element.attrib),
        "text": text,
        "children": [treeShape(c) for c in element],
    }


def childShape(child: PushChild) -> dict[str, Any]:
    return {
        "name": child.name,
        "uri": child.uri,
        "attributes": dict(child.attributes),
        "text": child.text,
        "children": [childShape(c) for c in child.children],
    }


def sentPayload(xml: str) -> ET.Element:
    """The ``yandex:push:disk`` element of an IQ the server sent."""
    payload = ET.fromstring(xml).find(f"{{{NS_DISK_PUSH}}}query")
    assert payload is not None, xml
    return payload


def readLines(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class PushTestCase(LocalServerTestCase):
    """Helpers: a connected client, an application with sinks, a barrier."""

    @defer.inlineCallbacks
    def connectedApplication(
        self, sinks: Sequence[Sink]
    ) -> Generator[Any, Any, tuple[LocalServer, PushApplication, ServerSession]]:
        """
        A local server and a subscribed :class:`PushApplication` with
        ``sinks``; both stopped on cleanup (the application first).
        """
        server = yield self.startServer()
        settings: Settings = self.settingsFor(server)
        app = PushApplication(PushService(settings, reactor=reactor), sinks)
        app.startService()
        self.addCleanup(stopApplication, app)
        yield app.push.whenReady()
        session = yield server.whenSubscribed(1)
        return server, app, session

    @defer.inlineCallbacks
    def connectedClient(
        self, observer: Any = None
    ) -> Generator[Any, Any, tuple[LocalServer, PushService, ServerSession]]:
        """A local server and a subscribed PushService, with ``observer``."""
        server = yield self.startServer()
        service = PushService(self.settingsFor(server), reactor=reactor)
        if observer is not None:
            service.addNotificationObserver(observer)
        service.startService()
        self.addCleanup(stopService, service)
        yield service.whenReady()
        session = yield server.whenSubscribed(1)
        return server, service, session

    @defer.inlineCallbacks
    def barrier(self, session: ServerSession) -> Steps:
        """
        Wait until everything the client sent before now has reached the
        server: a ping's answer follows it on the same stream.
        """
        pong = yield session.ping()
        self.assertEqual(pong["type"], "result")

    def assertAckedOnce(self, server: LocalServer, ids: list[str]) -> None:
        """Each of ``ids`` got exactly one result, in order; nothing else did."""
        self.assertEqual({i: server.acks[i] for i in ids}, {i: 1 for i in ids})
        self.assertEqual(sorted(server.acks), sorted(ids))
        acked = [e.details["id"] for e in server.eventsOf("push-acked")]
        self.assertEqual(acked, ids)
        self.assertEqual(server.eventsOf("push-refused"), [])

    def assertStillConnected(self, server: LocalServer, session: Any) -> None:
        """The client kept its first session: no reconnect, no close."""
        self.assertEqual(server.openSessions(LOGIN), [session])
        self.assertEqual(len(server.sessions), 1)

    def assertIntact(self, notification: Notification, sentXml: str) -> None:
        """Attributes, children and raw XML are those the server sent."""
        payload = sentPayload(sentXml)
        self.assertEqual(dict(notification.attributes), dict(payload.attrib))
        self.assertEqual(
            [childShape(c) for c in notification.children],
            [treeShape(c) for c in payload],
        )
        self.assertEqual(
            treeShape(sentPayload(notification.rawXml)), treeShape(payload)
        )


def stopService(service: PushService) -> defer.Deferred[None] | None:
    if service.running:
        return service.stopService()
    return service.clientService.stopService()


def stopApplication(app: PushApplication) -> Any:
    if app.running:
        return app.stopService()
    return stopService(app.push)


class APITests(PushTestCase):
    """Pushes reach addNotificationObserver whole, in order, acked once each."""

    @defer.inlineCallbacks
    def test_manyPushesInOrderAckedOnce(self) -> Steps:
        """Fifty pushes arrive in order with every attribute and unknown child
        element intact, and each is acknowledged exactly once."""
        received: list[Notification] = []
        server, service, session = yield self.connectedClient(received.append)
        count = 50
        answers = yield defer.gatherResults(
            [server.push(LOGIN, attributesFor(n), childrenFor(n)) for n in range(count)]
        )
        yield self.barrier(session)

        self.assertEqual([a["type"] for a in answers], ["result"] * count)
        sent = server.pushLog
        ids = [p.id for p in sent]
        self.assertEqual(len(ids), count)
        self.assertEqual([n.stanzaId for n in received], ids)
        self.assertAckedOnce(server, ids)
        for number, (notification, push) in enumerate(zip(received, sent, strict=True)):
            self.assertEqual(dict(notification.attributes), attributesFor(number))
            self.assertIntact(notification, push.xml)
            self.assertEqual(notification.sender, f"{LOGIN}@ya.ru")
            self.assertEqual(notification.recipient, push.jid)
            self.assertEqual(notification.element, "query")
        # The sample really holds what the shapes compare.
        first = received[0].children[0]
        self.assertEqual(first.uri, "urn:example:ops")
        self.assertEqual(first.attributes["key"], "disk:/Фото & видео/0 <1>.jpg")
        meta = first.children[0]
        self.assertEqual(meta.attributes["{urn:example:meta}size"], "0")
        self.assertEqual(meta.text, "Текст & text tail")
        self.assertEqual(meta.children[0].uri, "urn:example:deep")
        self.assertEqual(meta.children[0].text, "глубоко")
        self.assertEqual(received[0].children[2].uri, "urn:example:future")
        self.assertTrue(service.ready)
        self.assertStillConnected(server, session)

    @defer.inlineCallbacks
    def test_deferredObserverHoldsBackAck(self) -> Steps:
        """An observer's unfired Deferred holds back the push's ack and the
        delivery of the next push until it fires."""
        held: defer.Deferred[None] = defer.Deferred()
        firstCall: defer.Deferred[None] = defer.Deferred()
        calls: list[str] = []

        def observer(notification: Notification) -> defer.Deferred[None] | None:
            calls.append(notification.stanzaId)
            if len(calls) == 1:
                firstCall.callback(None)
                return held
            return None

        server, service, session = yield self.connectedClient(observer)
        answers = [server.push(LOGIN, attributesFor(n), childrenFor(n)) for n in (1, 2)]
        yield firstCall
        yield self.barrier(session)
        self.assertEqual(calls, ["push-1"])
        self.assertEqual(server.acks, {})
        self.assertFalse(any(a.called for a in answers))

        held.callback(None)
        results = yield defer.gatherResults(answers)
        self.assertEqual([r["type"] for r in results], ["result", "result"])
        self.assertEqual(calls, ["push-1", "push-2"])
        self.assertAckedOnce(server, ["push-1", "push-2"])

    @defer.inlineCallbacks
    def test_failingObserverRefusesPush(self) -> Steps:
        """A failing observer gets its push refused with internal-server-error
        (never acked), and the next push is delivered and acked."""
        calls: list[str] = []

        def observer(notification: Notification) -> defer.Deferred[None] | None:
            calls.append(notification.stanzaId)
            if len(calls) == 1:
                return defer.fail(RuntimeError("observer broke on purpose"))
            return None

        server, service, session = yield self.connectedClient(observer)
        refusal = yield server.push(LOGIN, attributesFor(1), childrenFor(1))
        accepted = yield server.push(LOGIN, attributesFor(2), childrenFor(2))
        yield self.barrier(session)
        self.flushLoggedErrors(RuntimeError)

        self.assertEqual(refusal["type"], "error")
        [refused] = server.eventsOf("push-refused")
        self.assertEqual(refused.details["condition"], "internal-server-error")
        self.assertEqual(accepted["type"], "result")
        self.assertEqual(calls, ["push-1", "push-2"])
        self.assertEqual(server.acks, {"push-2": 1})
        self.assertStillConnected(server, session)


class JSONOutTests(PushTestCase):
    """--json-out: one JSON line per push, written before the push is acked."""

    @defer.inlineCallbacks
    def test_linesInOrderWrittenBeforeAck(self) -> Steps:
        """Each push becomes one JSON line, in order and intact, and is in
        the file before its ack is sent and when the server receives it."""
        path = os.path.join(self.directory, "pushes.jsonl")
        server, app, session = yield self.connectedApplication([JSONLinesSink(path)])

        # Client side: lines in the file when each ack is sent.
        linesAtSend: dict[str, list[str]] = {}
        xs = app.push.streamManager.xmlstream
        send = xs.send

        def recordingSend(obj: Any) -> None:
            if isinstance(obj, str) and obj.startswith("<iq type='result'"):
                answer = parseXml(obj)
                linesAtSend[answer["id"]] = [o["id"] for o in readLines(path)]
            send(obj)

        xs.send = recordingSend

        # Server side: lines in the file when each ack arrives.
        linesAtAck: dict[str, list[str]] = {}

        def acked(answer: domish.Element) -> domish.Element:
            linesAtAck[answer["id"]] = [o["id"] for o in readLines(path)]
            return answer

        count = 50
        yield defer.gatherResults(
            [
                server.push(LOGIN, attributesFor(n), childrenFor(n)).addCallback(acked)
                for n in range(count)
            ]
        )
        yield self.barrier(session)

        ids = [p.id for p in server.pushLog]
        self.assertAckedOnce(server, ids)
        for k, pushId in enumerate(ids, start=1):
            self.assertEqual(linesAtSend[pushId][:k], ids[:k])
            self.assertEqual(linesAtAck[pushId][:k], ids[:k])

        with open(path, encoding="utf-8") as f:
            raw = f.read()
        self.assertEqual(raw.count("\n"), count)
        lines = readLines(path)
        self.assertEqual([o["id"] for o in lines], ids)
        for number, (line, push) in enumerate(zip(lines, server.pushLog, strict=True)):
            payload = sentPayload(push.xml)
            self.assertEqual(line["attributes"], attributesFor(number))
            self.assertEqual(line["attributes"], dict(payload.attrib))
            self.assertEqual(line["children"], [treeShape(c) for c in payload])
            self.assertEqual(
                treeShape(sentPayload(line["raw_xml"])), treeShape(payload)
            )
            self.assertEqual(line["element"], "query")
            self.assertEqual(line["to"], push.jid)
        self.assertStillConnected(server, session)


#: Records one run: its stdin in a file named after the run's last push id;
#: then, if the gate FIFO exists, waits for a line on it.
RECORDED_RUN = (
    'cat > "$DIR/run-$YADISKPUSH_ID.jsonl"; '
    'if [ -p "$DIR/gate" ]; then read -r line < "$DIR/gate"; fi'
)


class ExecTests(PushTestCase):
    """--exec with real child processes, behind a real connection."""

    timeout = 30

    def setUp(self) -> None:
        super().setUp()
        self.recorder = LogRecorder()
        self.environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self.environ["DIR"] = self.directory

    def execSink(self, command: str, timeout: float, **kwargs: Any) -> ExecSink:
        return ExecSink(
            command,
            timeout,
            reactor=reactor,
            environ=self.environ,
            log=Logger(observer=cast(ILogObserver, self.recorder)),
            # Each push runs at once, as these tests expect.
            **{"debounce": 0, **kwargs},
        )

    def openGate(self) -> int:
        """
        Make the FIFO a recorded run waits on; return its write end. Both
        ends stay open here, so the child's open never blocks; on cleanup the
        FIFO is removed and closed, which ends a run still waiting.
        """
        gate = os.path.join(self.directory, "gate")
        os.mkfifo(gate)
        readEnd = os.open(gate, os.O_RDONLY | os.O_NONBLOCK)
        writeEnd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, writeEnd)
        # Runs after cleanup's close of the app must not wait on the gate.
        self.addCleanup(os.unlink, gate)
        return writeEnd

    def recordedRun(self, lastId: str) -> list[str]:
        path = os.path.join(self.directory, f"run-{lastId}.jsonl")
        return [o["id"] for o in readLines(path)]

    def recordedRunCount(self) -> int:
        return sum(1 for n in os.listdir(self.directory) if n.startswith("run-"))

    @defer.inlineCallbacks
    def test_pushesDuringARunCoalesce(self) -> Steps:
        """A hundred pushes arriving while a slow command runs are all acked
        at once and make exactly one follow-up run that reads all of them."""
        sink = self.execSink(RECORDED_RUN, timeout=20)
        server, app, session = yield self.connectedApplication([sink])
        gate = self.openGate()

        first = yield server.push(LOGIN, attributesFor(0), childrenFor(0))
        self.assertEqual(first["type"], "result")
        self.assertEqual(sink.runs, 1)
        answers = yield defer.gatherResults(
            [
                server.push(LOGIN, attributesFor(n), childrenFor(n))
                for n in range(1, 101)
            ]
        )
        # Acked while the first run is still blocked on the gate.
        self.assertEqual([a["type"] for a in answers], ["result"] * 100)
        self.assertEqual(self.recorder.matching(isRunEnd), [])
        self.assertEqual(sink.runs, 1)

        os.write(gate, b"go\n")
        yield self.recorder.waitFor(isRunEnd, 1)
        self.assertEqual(sink.runs, 2)
        os.write(gate, b"go\n")
        ends = yield self.recorder.waitFor(isRunEnd, 2)
        yield self.barrier(session)

        ids = [p.id for p in server.pushLog]
        self.assertEqual(len(ids), 101)
        self.assertAckedOnce(server, ids)
        self.assertEqual(sink.runs, 2)
        self.assertEqual(self.recordedRunCount(), 2)
        self.assertEqual(self.recordedRun(ids[0]), ids[:1])
        self.assertEqual(self.recordedRun(ids[-1]), ids[1:])
        self.assertEqual([e["count"] for e in ends], [1, 100])
        self.assertEqual([e["exitStatus"] for e in ends], [0, 0])
        self.assertStillConnected(server, session)

    @defer.inlineCallbacks
    def test_failingCommandKeepsConnection(self) -> Steps:
        """A command exiting with status 3 is logged, the client stays
        connected, and the next push is acked and runs the command again."""
        sink = self.execSink('cat > "$DIR/run-$YADISKPUSH_ID.jsonl"; exit 3', 10)
        server, app, session = yield self.connectedApplication([sink])

        answer = yield server.push(LOGIN, attributesFor(1), childrenFor(1))
        self.assertEqual(answer["type"], "result")
        [end] = yield self.recorder.waitFor(isRunEnd, 1)
        self.assertEqual(end["exitStatus"], 3)
        self.assertFalse(end["timedOut"])

        answer = yield server.push(LOGIN, attributesFor(2), childrenFor(2))
        self.assertEqual(answer["type"], "result")
        ends = yield self.recorder.waitFor(isRunEnd, 2)
        yield self.barrier(session)
        self.assertEqual([e["exitStatus"] for e in ends], [3, 3])
        self.assertEqual(self.recordedRun("push-1"), ["push-1"])
        self.assertEqual(self.recordedRun("push-2"), ["push-2"])
        self.assertAckedOnce(server, ["push-1", "push-2"])
        self.assertStillConnected(server, session)

    @defer.inlineCallbacks
    def test_hangingCommandKilledByTimeout(self) -> Steps:
        """A hanging command is stopped by its timeout while the client stays
        connected; pushes during and after it are acked and run again."""
        sink = self.execSink("cat > /dev/null; sleep 60", timeout=0.5, killGrace=2.0)
        server, app, session = yield self.connectedApplication([sink])

        answer = yield server.push(LOGIN, attributesFor(1), childrenFor(1))
        self.assertEqual(answer["type"], "result")
        # A push during the hanging run is acked without waiting for it.
        during = yield server.push(LOGIN, attributesFor(2), childrenFor(2))
        self.assertEqual(during["type"], "result")
        [end] = yield self.recorder.waitFor(isRunEnd, 1)
        self.assertTrue(end["timedOut"])
        self.assertEqual(end["count"], 1)
        self.assertEqual(end["signalName"], "SIGTERM")
        self.assertStillConnected(server, session)

        # The follow-up run (for push 2) hangs and is stopped as well.
        ends = yield self.recorder.waitFor(isRunEnd, 2)
        self.assertEqual([e["count"] for e in ends], [1, 1])
        self.assertEqual([e["id"] for e in ends], ["push-1", "push-2"])
        self.assertTrue(ends[1]["timedOut"])
        after = yield server.push(LOGIN, attributesFor(3), childrenFor(3))
        self.assertEqual(after["type"], "result")
        yield self.barrier(session)
        self.assertAckedOnce(server, ["push-1", "push-2", "push-3"])
        self.assertStillConnected(server, session)


class UnknownIQTests(PushTestCase):
    """An IQ get or set the client does not understand gets service-unavailable."""

    def sendIQ(
        self, session: ServerSession, iqType: str, iqId: str, payload: str
    ) -> defer.Deferred[domish.Element]:
        """
        Send an arbitrary IQ to the client; fires with its answer. Registering
        the id in ``session.requests`` makes the server keep the answer.
        """
        assert session.jid is not None
        session.requests[iqId] = "probe"
        answered = session.whenAnswered(iqId)
        session.sendRaw(
            f"<iq type='{iqType}' id='{iqId}' from='ya.ru' "
            f"to='{session.jid.full()}'>{payload}</iq>".encode()
        )
        return answered

    @defer.inlineCallbacks
    def test_unknownRequestsAnsweredWithServiceUnavailable(self) -> Steps:
        """Unknown IQ gets and sets, including a get in the push namespace and
        a version set, are answered with a service-unavailable error."""
        received: list[Notification] = []
        server, service, session = yield self.connectedClient(received.append)
        probes = [
            ("get", "probe-1", "<query xmlns='urn:example:unknown'/>"),
            ("set", "probe-2", "<command xmlns='urn:example:unknown'><x/></command>"),
            ("get", "probe-3", f"<query xmlns='{NS_DISK_PUSH}' t='diff'/>"),
            ("set", "probe-4", "<query xmlns='jabber:iq:version'/>"),
        ]
        for iqType, iqId, payload in probes:
            answer = yield self.sendIQ(session, iqType, iqId, payload)
            self.assertEqual(answer["type"], "error", iqId)
            self.assertEqual(answer["id"], iqId)
            self.assertEqual(answer.getAttribute("to"), "ya.ru")
            [errorElement] = [e for e in answer.elements() if e.name == "error"]
            self.assertEqual(errorElement["type"], "cancel")
            conditions = [
                e.name for e in errorElement.elements() if e.uri == NS_STANZAS
            ]
            self.assertEqual(conditions, ["service-unavailable"], iqId)

        yield self.barrier(session)
        self.assertEqual(
            {iqId: len(session.answers[iqId]) for _, iqId, _ in probes},
            {iqId: 1 for _, iqId, _ in probes},
        )
        self.assertEqual(received, [])
        ack = yield server.push(LOGIN, attributesFor(1), childrenFor(1))
        self.assertEqual(ack["type"], "result")
        self.assertEqual([n.stanzaId for n in received], ["push-1"])
        self.assertStillConnected(server, session)

    @defer.inlineCallbacks
    def test_answersAreNotAnswered(self) -> Steps:
        """An unsolicited IQ result or error gets no answer at all."""
        server, service, session = yield self.connectedClient()
        for answer in (
            self.sendIQ(session, "result", "stray-1", ""),
            self.sendIQ(session, "error", "stray-2", "<error type='cancel'/>"),
        ):
            # Never fires unless the client wrongly answers; fails on close.
            answer.addErrback(lambda f: f.trap(NoAnswer))
        yield self.barrier(session)
        self.assertNotIn("stray-1", session.answers)
        self.assertNotIn("stray-2", session.answers)
        self.assertEqual(server.eventsOf("unexpected-answer"), [])
        self.assertStillConnected(server, session)
