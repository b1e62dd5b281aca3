"""Tests for yadiskpush.notification: pushes of any depth become whole values."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish
from wokkel.generic import parseXml

from yadiskpush import notification as notificationModule
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.notification import (
    MAX_STRUCTURED_DEPTH,
    Notification,
    PushChild,
    serializeElement,
)

# As domish serializes them, so rawXml must give the input back unchanged.
HEAD = (
    "<iq xmlns='jabber:client' type='set' from='test@ya.ru' to='test@ya.ru/r' "
    "id='deep'><query xmlns='yandex:push:disk' t='diff' uid='1'>"
)
TAIL = "</query></iq>"

# The stream's element cap for its default 1 MiB stanza size
# (yadiskpush.connection.stream: maxStanzaSize // 16).
DEEPEST_THE_STREAM_ALLOWS = 1024 * 1024 // 16 - 10


def deepStanzaText(depth: int) -> str:
    """A push whose payload holds ``depth`` nested elements around a text."""
    return (
        HEAD
        + "<op type='x' i='0'>"
        + "<a>" * (depth - 1)
        + "bottom &amp; end"
        + "</a>" * (depth - 1)
        + "</op>"
        + TAIL
    )


def elementDepth(element: domish.Element) -> int:
    """How many levels of elements ``element`` holds, itself included."""
    deepest = 0
    stack = [(element, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in current.elements())
    return deepest


def structuredDepth(child: PushChild) -> int:
    """How many levels of PushChild values ``child`` holds, itself included."""
    depth = 1
    while child.children:
        [child] = child.children
        depth += 1
    return depth


class SerializeElementTests(SynchronousTestCase):
    """serializeElement writes exactly what domish's toXml writes."""

    SAMPLES = [
        b"<iq xmlns='jabber:client' type='set' id='1'><query "
        b"xmlns='yandex:push:disk' t='d'><op a='1'>text</op><e/></query></iq>",
        b"<iq xmlns='jabber:client'><q xmlns='u'><a:x xmlns:a='urn:a' "
        b"xmlns:b='urn:b' b:c='1'><y xml:lang='en'>t&lt;&amp;&gt;</y><a:z/>"
        b"</a:x><a:w xmlns:a='urn:other'/></q></iq>",
        b"<m xmlns='jabber:client'><p:a xmlns:p='urn:p'><p:b><p:c q='&apos;"
        b"&quot;'/></p:b><d xmlns='urn:d'><e/></d></p:a>mixed<f/>tail</m>",
        "<iq xmlns='jabber:client'><q xmlns='yandex:push:disk' "
        "name='Отчёт &amp; план'>\u2028Фото</q></iq>".encode(),
    ]

    def test_parsedSamples(self) -> None:
        """Parsed stanzas with prefixes, default namespaces and escapes match."""
        for sample in self.SAMPLES:
            element = parseXml(sample)
            self.assertEqual(serializeElement(element), element.toXml())

    def test_builtElements(self) -> None:
        """Built elements with namespaced attributes and raw XML match."""
        root = domish.Element(("jabber:client", "iq"))
        root["type"] = "set"
        query = root.addElement(("yandex:push:disk", "query"))
        query[("urn:attr", "flag")] = "1"
        query[("urn:attr", "other")] = "2"
        inner = query.addElement("plain", defaultUri=None)
        inner.addContent("a < b")
        inner.addElement(("urn:x", "child")).addRawXml("<raw a='1'/>")
        query.addElement(("urn:attr", "same"))
        self.assertEqual(serializeElement(root), root.toXml())

    def test_deepWithoutRecursion(self) -> None:
        """A stanza nested far beyond the recursion limit serializes whole."""
        text = deepStanzaText(DEEPEST_THE_STREAM_ALLOWS)
        self.assertEqual(serializeElement(parseXml(text.encode())), text)


class DeepPushTests(SynchronousTestCase):
    """A deep push becomes a notification, a JSON line and a summary."""

    def assertWhole(self, depth: int) -> None:
        text = deepStanzaText(depth)
        notification = Notification.fromStanza(parseXml(text.encode()), 17.5)

        [op] = notification.children
        self.assertEqual(structuredDepth(op), MAX_STRUCTURED_DEPTH)
        bottom = op
        while bottom.children:
            self.assertFalse(bottom.truncated)
            [bottom] = bottom.children
        self.assertTrue(bottom.truncated)
        self.assertEqual(elementDepth(parseXml(bottom.xml.encode())), depth - 31)
        self.assertEqual(notification.rawXml, text)

        line = encodeJSONLine(notification)
        self.assertEqual(line.count(b"\n"), 1)
        self.assertTrue(line.endswith(b"\n"))
        data = json.loads(line)
        self.assertEqual(data["raw_xml"], text)
        self.assertEqual(data["id"], "deep")
        child = data["children"][0]
        for _ in range(MAX_STRUCTURED_DEPTH - 1):
            self.assertNotIn("truncated", child)
            [child] = child["children"]
        self.assertEqual(child["truncated"], True)
        self.assertEqual(child["children"], [])
        self.assertEqual(child["xml"], bottom.xml)

        # The op directly under the payload is a change of an unknown type,
        # without a key; what it holds is no concern of the change.
        [change] = notification.changes
        self.assertEqual((change.type, change.path), ("x", ""))
        self.assertEqual(dict(change.attributes), {"type": "x", "i": "0"})
        self.assertEqual(data["changes"], [change.toJSON()])
        self.assertEqual(
            notification.summary(), "Disk changed: id='deep' 1 change: x (no path)"
        )

    def test_600Deep(self) -> None:
        """A push nested 600 deep is converted, encoded and summarized whole."""
        self.assertWhole(600)

    def test_5000Deep(self) -> None:
        """A push nested 5,000 deep is converted, encoded and summarized whole."""
        self.assertWhole(5000)

    def test_asDeepAsTheStreamAllows(self) -> None:
        """A push as deep as the stream's element cap allows is whole too."""
        self.assertWhole(DEEPEST_THE_STREAM_ALLOWS)

    def test_exactlyAtTheLimit(self) -> None:
        """A payload exactly MAX_STRUCTURED_DEPTH deep is structured, untruncated."""
        text = deepStanzaText(MAX_STRUCTURED_DEPTH)
        [op] = Notification.fromStanza(parseXml(text.encode()), 0).children
        self.assertEqual(structuredDepth(op), MAX_STRUCTURED_DEPTH)
        bottom = op
        while bottom.children:
            [bottom] = bottom.children
        self.assertFalse(bottom.truncated)
        self.assertEqual(bottom.text, "bottom & end")
        self.assertNotIn(b"truncated", encodeJSONLine(self.notify(text)))

    def test_oneBelowTheLimit(self) -> None:
        """One level more is truncated at the limit, with the rest in xml."""
        text = deepStanzaText(MAX_STRUCTURED_DEPTH + 1)
        [op] = self.notify(text).children
        bottom = op
        while bottom.children:
            [bottom] = bottom.children
        self.assertTrue(bottom.truncated)
        self.assertEqual(
            bottom.xml, "<a xmlns='yandex:push:disk'><a>bottom &amp; end</a></a>"
        )

    def test_siblingsKeepOrder(self) -> None:
        """Built without recursion, children keep their document order."""
        text = HEAD + "<a n='1'><b n='2'/><c n='3'><d n='4'/></c></a><e n='5'/>" + TAIL
        notification = self.notify(text)
        order = []
        stack = list(reversed(notification.children))
        while stack:
            child = stack.pop()
            order.append((child.name, child.attributes["n"]))
            stack.extend(reversed(child.children))
        self.assertEqual(
            order, [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]
        )
        self.assertEqual(
            notification.children[0].xml,
            "<a xmlns='yandex:push:disk' n='1'><b n='2'/><c n='3'><d n='4'/></c></a>",
        )

    def notify(self, text: str) -> Notification:
        return Notification.fromStanza(parseXml(text.encode()), 0)


class ValueTests(SynchronousTestCase):
    """A notification is an immutable value whose XML is serialized once, late."""

    def setUp(self) -> None:
        self.calls: list[object] = []
        original = notificationModule.serializeElement

        def counting(element: Any) -> str:
            self.calls.append(element)
            return original(element)

        self.patch(notificationModule, "serializeElement", counting)

    def test_rawXmlSerializedOnFirstRead(self) -> None:
        """rawXml is serialized when first read, once, not when built."""
        notification = Notification.fromStanza(parseXml(deepStanzaText(3).encode()), 0)
        self.assertEqual(self.calls, [])
        first = notification.rawXml
        second = notification.rawXml
        self.assertEqual(first, deepStanzaText(3))
        self.assertIs(first, second)
        self.assertEqual(len(self.calls), 1)

    def test_childXmlSerializedOnFirstRead(self) -> None:
        """A child's xml is serialized only when read."""
        notification = Notification.fromStanza(parseXml(deepStanzaText(3).encode()), 0)
        notification.toJSON()
        self.assertEqual(len(self.calls), 1)
        notification.children[0].xml  # noqa: B018
        self.assertEqual(len(self.calls), 2)

    def test_frozen(self) -> None:
        """Neither rawXml nor any other field can be assigned."""
        notification = Notification.fromStanza(parseXml(deepStanzaText(3).encode()), 0)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            notification.rawXml = "<iq/>"  # type: ignore[misc]
        with self.assertRaises(dataclasses.FrozenInstanceError):
            notification.children[0].xml = "<a/>"  # type: ignore[misc]
        self.assertEqual(notification.rawXml, deepStanzaText(3))

    def test_equalityIncludesRawXml(self) -> None:
        """Two parses of one stanza are equal; a different rawXml is not."""
        first = Notification.fromStanza(parseXml(deepStanzaText(3).encode()), 0)
        second = Notification.fromStanza(parseXml(deepStanzaText(3).encode()), 0)
        self.assertEqual(first, second)
        self.assertNotEqual(first, dataclasses.replace(second, rawXml="<iq/>"))

    def test_constructedFromText(self) -> None:
        """The constructor still takes rawXml as text, as before."""
        notification = Notification(
            "i", "s", "r", 1.0, "query", {}, (), rawXml="<iq id='i'/>"
        )
        self.assertEqual(notification.rawXml, "<iq id='i'/>")
        self.assertEqual(notification.toJSON()["raw_xml"], "<iq id='i'/>")
        self.assertIn("rawXml=" + repr("<iq id='i'/>"), repr(notification))

    def test_loginTagged(self) -> None:
        """fromStanza tags the notification with the login; toJSON puts it first."""
        notification = Notification.fromStanza(
            parseXml(deepStanzaText(1).encode()), 0, login="alice"
        )
        self.assertEqual(notification.login, "alice")
        self.assertEqual(next(iter(notification.toJSON().items())), ("login", "alice"))

    def test_loginLastAndOptional(self) -> None:
        """Positional construction without a login still works; login is ""."""
        notification = Notification("i", "s", "r", 1.0, "query", {}, (), "<iq/>")
        self.assertEqual((notification.rawXml, notification.login), ("<iq/>", ""))
        self.assertEqual(notification.toJSON()["login"], "")

    def test_jsonKeys(self) -> None:
        """toJSON keeps its keys; an untruncated child has no extra ones."""
        data = Notification.fromStanza(parseXml(deepStanzaText(2).encode()), 0).toJSON()
        self.assertEqual(
            list(data),
            [
                "login",
                "id",
                "from",
                "to",
                "received_at",
                "element",
                "attributes",
                "changes",
                "children",
                "raw_xml",
            ],
        )
        self.assertEqual(
            sorted(data["children"][0]),
            ["attributes", "children", "name", "text", "uri"],
        )

    def test_noPayload(self) -> None:
        """A stanza without a Disk payload is refused with ValueError."""
        with self.assertRaises(ValueError):
            Notification.fromStanza(parseXml(b"<iq type='set'><x xmlns='u'/></iq>"), 0)


# Random element trees for the serializer: default namespaces that change or
# not, declared prefixes, namespaced attributes, text and values that need
# escaping, raw XML. Names and values are small alphabets, so that shapes
# repeat and collide (a prefix declared twice, a namespace reused).
_uris = st.sampled_from(["", "jabber:client", "yandex:push:disk", "urn:a", "urn:b"])
_names = st.sampled_from(["iq", "query", "a", "b", "op"])
_text = st.text(alphabet="ab &<>'\"\u2028Ф", max_size=6)
_attributeNames = st.one_of(
    st.sampled_from(["id", "type", "t", "v"]),
    st.tuples(st.sampled_from(["urn:a", "urn:x"]), st.sampled_from(["f", "g"])),
)


@st.composite
def elementTrees(draw: Any, depth: int = 3, prefixed: bool = True) -> domish.Element:
    """A tree; without ``prefixed``, one as pushes are: no prefixes at all."""
    uri = draw(_uris)
    if prefixed:
        prefixes = draw(
            st.dictionaries(st.sampled_from(["p", "q"]), _uris.filter(bool), max_size=1)
        )
        defaultUri = draw(st.one_of(st.none(), _uris))
        names = _attributeNames
    else:
        prefixes, defaultUri, names = {}, None, st.sampled_from(["id", "t", "v"])
    element = domish.Element(
        (uri, draw(_names)),
        defaultUri=defaultUri,
        attribs=draw(st.dictionaries(names, _text, max_size=3)),
        localPrefixes=prefixes,
    )
    if depth:
        for kind in draw(st.lists(st.sampled_from("etr"), max_size=3)):
            if kind == "e":
                element.addChild(draw(elementTrees(depth - 1, prefixed)))
            elif kind == "t":
                element.addContent(draw(_text.filter(bool)))
            else:
                element.addRawXml("<raw x='1'/>")
    return element


class SerializePropertyTests(SynchronousTestCase):
    """Both serializers (without and with prefixes) write what toXml writes."""

    @settings(max_examples=400, deadline=None)
    @given(elementTrees())
    def test_builtTrees(self, element: domish.Element) -> None:
        """Any built tree serializes exactly as domish serializes it."""
        self.assertEqual(serializeElement(element), element.toXml())

    @settings(max_examples=300, deadline=None)
    @given(elementTrees())
    def test_parsedTrees(self, element: domish.Element) -> None:
        """A tree parsed back from its XML serializes as domish serializes it."""
        try:
            parsed = parseXml(element.toXml().encode("utf-8"))
        except Exception:
            # Random trees may repeat an attribute under two prefixes of
            # one namespace, which XML forbids: nothing to parse then.
            return
        self.assertEqual(serializeElement(parsed), parsed.toXml())

    @settings(max_examples=300, deadline=None)
    @given(elementTrees(prefixed=False))
    def test_unprefixedTrees(self, element: domish.Element) -> None:
        """Trees shaped as pushes are (no prefixes) serialize as domish does."""
        self.assertEqual(serializeElement(element), element.toXml())
        parsed = parseXml(element.toXml().encode("utf-8"))
        self.assertEqual(serializeElement(parsed), parsed.toXml())

    def test_pushTakesTheShortPath(self) -> None:
        """A push as the stream parses it needs no prefix bookkeeping."""
        iq = parseXml(deepStanzaText(1).encode())
        self.assertIsNotNone(notificationModule._serializeUnprefixed(iq))


class FromStanzaTests(SynchronousTestCase):
    """fromStanza builds the same value the constructor builds."""

    def test_sameAsConstructed(self) -> None:
        """Every field, rawXml included, equals a constructed notification's."""
        iq = parseXml(deepStanzaText(2).encode())
        built = Notification.fromStanza(iq, 2.5, "alice")
        constructed = Notification(
            stanzaId=built.stanzaId,
            sender=built.sender,
            recipient=built.recipient,
            receivedAt=2.5,
            element="query",
            attributes=built.attributes,
            children=built.children,
            rawXml=iq.toXml(),
            login="alice",
        )
        self.assertEqual(built, constructed)
        self.assertEqual(repr(built), repr(constructed))
        self.assertEqual(dataclasses.replace(built, login="bob").login, "bob")

    def test_subclassUsesItsConstructor(self) -> None:
        """A subclass of Notification is built through its own __init__."""
        seen: list[str] = []

        @dataclasses.dataclass(frozen=True)
        class Tagged(Notification):
            def __post_init__(self) -> None:
                seen.append(self.stanzaId)

        tagged = Tagged.fromStanza(parseXml(deepStanzaText(1).encode()), 0)
        self.assertIsInstance(tagged, Tagged)
        self.assertEqual(seen, ["deep"])

    def test_attributesAreACopy(self) -> None:
        """The notification's attributes do not follow later changes."""
        iq = parseXml(deepStanzaText(1).encode())
        notification = Notification.fromStanza(iq, 0)
        iq.query["t"] = "changed"
        self.assertEqual(notification.attributes["t"], "diff")
