"""
Tests for what changed: Notification.changes, Change, and the local server's
realistic diffs (yadiskpush.localserver.diffs).

Pushes are parsed from XML text with the same parser the stream uses, so
every shape here is one the client could receive.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish
from wokkel.generic import parseXml

from yadiskpush import Change
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.localserver import diffs
from yadiskpush.notification import (
    NS_DISK_PUSH,
    SUMMARY_CHANGES,
    Notification,
    PushChild,
    diskPath,
)

#: The push the public clients of the vendor's server log, whole.
REALISTIC = """\
<iq type="set" from="test@ya.ru" to="test@ya.ru/r" id="42">
  <query xmlns="yandex:push:disk" t="diff" uid="123" old="1598" new="1599">
    <diff>
      <op type="new" key="/disk/Docs/a.txt" fid="9a1c" resource_type="file"
          size="1024" md5="d41d8cd9" sha256="e3b0c442"/>
      <op type="changed" key="disk:/Docs/b.txt" fid="77ef" size="2048"/>
      <op type="deleted" key="/disk/Old" resource_type="dir"/>
      <op type="moved" key="/disk/New name.txt" from="/disk/Old name.txt"/>
      <op type="published" key="/disk/Share"/>
    </diff>
  </query>
</iq>"""


def push(payloadInner: str, attributes: str = "t='diff'") -> Notification:
    """A received push whose payload holds ``payloadInner``."""
    xml = (
        "<iq xmlns='jabber:client' type='set' from='test@ya.ru' to='test@ya.ru/r' "
        f"id='p1'><query xmlns='yandex:push:disk' {attributes}>{payloadInner}"
        "</query></iq>"
    )
    return Notification.fromStanza(parseXml(xml.encode("utf-8")), 1.5, "test")


def referenceLine(notification: Notification) -> bytes:
    """The JSON line as json.dumps writes it."""
    text = json.dumps(notification.toJSON(), ensure_ascii=False)
    for char in "\u0085\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text.encode("utf-8") + b"\n"


class RealisticPushTests(SynchronousTestCase):
    """The vendor's diff becomes one Change per op, in order."""

    def setUp(self) -> None:
        self.notification = Notification.fromStanza(
            parseXml(REALISTIC.encode()), 1.5, "test"
        )

    def test_fields(self) -> None:
        """Type as sent, path without prefix, from, fid, size, resource type."""
        self.assertEqual(
            [
                (c.type, c.path, c.fromPath, c.fid, c.size, c.resourceType)
                for c in self.notification.changes
            ],
            [
                ("new", "/Docs/a.txt", None, "9a1c", 1024, "file"),
                ("changed", "/Docs/b.txt", None, "77ef", 2048, None),
                ("deleted", "/Old", None, None, None, "dir"),
                ("moved", "/New name.txt", "/Old name.txt", None, None, None),
                ("published", "/Share", None, None, None, None),
            ],
        )

    def test_everyAttributeKept(self) -> None:
        """The raw key and the attributes nothing reads are kept as sent."""
        first = self.notification.changes[0]
        self.assertEqual(
            dict(first.attributes),
            {
                "type": "new",
                "key": "/disk/Docs/a.txt",
                "fid": "9a1c",
                "resource_type": "file",
                "size": "1024",
                "md5": "d41d8cd9",
                "sha256": "e3b0c442",
            },
        )

    def test_childrenAndRawXmlUntouched(self) -> None:
        """The diff is still a child, whole, and in the raw XML."""
        [diff] = self.notification.children
        self.assertEqual(diff.name, "diff")
        self.assertEqual([op.name for op in diff.children], ["op"] * 5)
        self.assertIn("from='/disk/Old name.txt'", self.notification.rawXml)

    def test_json(self) -> None:
        """Each change is an object with the documented keys, in order."""
        data = json.loads(encodeJSONLine(self.notification))
        self.assertEqual(list(data)[:2], ["login", "id"])
        self.assertEqual(
            list(data).index("changes"), list(data).index("attributes") + 1
        )
        moved = data["changes"][3]
        self.assertEqual(
            moved,
            {
                "type": "moved",
                "path": "/New name.txt",
                "from": "/Old name.txt",
                "fid": None,
                "size": None,
                "resource_type": None,
                "attributes": {
                    "type": "moved",
                    "key": "/disk/New name.txt",
                    "from": "/disk/Old name.txt",
                },
            },
        )
        self.assertEqual(data["changes"][0]["size"], 1024)
        self.assertEqual(
            encodeJSONLine(self.notification), referenceLine(self.notification)
        )

    def test_summary(self) -> None:
        """The log line says what changed, in words."""
        self.assertEqual(
            self.notification.summary(),
            "Disk changed: id='42' 5 changes: created /Docs/a.txt, changed "
            "/Docs/b.txt, deleted /Old, moved /Old name.txt -> /New name.txt, "
            "published /Share",
        )

    def test_parsedOnceWhenAsked(self) -> None:
        """Parsed when first read, then the same tuple every time."""
        self.assertNotIn("changes", vars(self.notification))
        changes = self.notification.changes
        self.assertIs(self.notification.changes, changes)
        self.assertIsInstance(changes, tuple)


class ShapeTests(SynchronousTestCase):
    """Whatever the shape, changes are what the ops say, and nothing raises."""

    def assertChanges(self, inner: str, expected: list[tuple[str, str]]) -> None:
        notification = push(inner)
        self.assertEqual([(c.type, c.path) for c in notification.changes], expected)
        json.loads(encodeJSONLine(notification))
        self.assertIsInstance(notification.summary(), str)

    def test_noChildren(self) -> None:
        """A push without children has no changes; the line says []."""
        notification = push("")
        self.assertEqual(notification.changes, ())
        self.assertEqual(json.loads(encodeJSONLine(notification))["changes"], [])
        self.assertEqual(notification.summary(), "Disk changed: id='p1' t='diff'")

    def test_noDiff(self) -> None:
        """Children that are not ops are no changes, and stay children."""
        notification = push("<resource path='/disk/a'/><revision>7</revision>")
        self.assertEqual(notification.changes, ())
        self.assertEqual(len(notification.children), 2)
        self.assertIn("[resource path='/disk/a']", notification.summary())

    def test_emptyDiff(self) -> None:
        """An empty diff: no changes."""
        self.assertChanges("<diff/>", [])

    def test_opsDirectlyUnderThePayload(self) -> None:
        """Ops without a diff around them count."""
        self.assertChanges(
            "<op type='new' key='/disk/a'/><op type='deleted' key='/disk/b'/>",
            [("new", "/a"), ("deleted", "/b")],
        )

    def test_nestedDiffs(self) -> None:
        """Ops in diffs in diffs count, in document order."""
        self.assertChanges(
            "<diff><op type='new' key='/disk/1'/><diff><op type='new' "
            "key='/disk/2'/></diff><op type='new' key='/disk/3'/></diff>"
            "<op type='new' key='/disk/4'/>",
            [("new", "/1"), ("new", "/2"), ("new", "/3"), ("new", "/4")],
        )

    def test_otherNamespace(self) -> None:
        """An op in another namespace is an op."""
        self.assertChanges(
            "<diff xmlns='urn:example:ops'><op type='changed' key='disk:/x'/></diff>",
            [("changed", "/x")],
        )

    def test_unknownElementsIgnored(self) -> None:
        """Unknown elements are no changes; ops inside them still are."""
        self.assertChanges(
            "<diff><future a='1'/><op type='new' key='/disk/a'/>text</diff>"
            "<wrapper><op type='deleted' key='/disk/b'/></wrapper><opx/>",
            [("new", "/a"), ("deleted", "/b")],
        )

    def test_elementsInsideAnOpAreNotChanges(self) -> None:
        """An op inside an op belongs to the outer one."""
        self.assertChanges(
            "<op type='moved' key='/disk/a'><op type='x' key='/disk/b'/></op>",
            [("moved", "/a")],
        )

    def test_unknownTypeKept(self) -> None:
        """An op type nobody knows yet is kept as sent, and shown as sent."""
        notification = push("<diff><op type='shared-with-group' key='/disk/a'/></diff>")
        [change] = notification.changes
        self.assertEqual(change.type, "shared-with-group")
        self.assertTrue(notification.summary().endswith("shared-with-group /a"))

    def test_missingKeyAndType(self) -> None:
        """An op with no attributes is kept, with an empty type and path."""
        notification = push("<diff><op/></diff>")
        [change] = notification.changes
        self.assertEqual(
            (change.type, change.path, change.fromPath, change.fid, change.size),
            ("", "", None, None, None),
        )
        self.assertEqual(
            notification.summary(), "Disk changed: id='p1' 1 change: changed (no path)"
        )

    def test_namespacedAttributes(self) -> None:
        """A namespaced attribute is kept in Clark notation, and not read."""
        [change] = push(
            "<op xmlns:e='urn:e' e:key='/disk/no' key='/disk/yes' type='new'/>"
        ).changes
        self.assertEqual(change.path, "/yes")
        self.assertEqual(change.attributes["{urn:e}key"], "/disk/no")

    def test_cyrillicAndEscapes(self) -> None:
        """Cyrillic, spaces and escaped characters come through as text."""
        [change] = push(
            "<op type='new' key='/disk/Фото &amp; видео/Море &lt;1&gt;.jpg'/>"
        ).changes
        self.assertEqual(change.path, "/Фото & видео/Море <1>.jpg")

    def test_deeperThanStructuredIsNotRead(self) -> None:
        """An op below the structured depth is in the raw XML only."""
        inner = "<a>" * 40 + "<op type='new' key='/disk/deep'/>" + "</a>" * 40
        notification = push(inner)
        self.assertEqual(notification.changes, ())
        self.assertIn("/disk/deep", notification.rawXml)


class SizeTests(SynchronousTestCase):
    """size is an int only when it is a plain non-negative decimal number."""

    def sizeOf(self, value: str) -> int | None:
        [change] = push(f"<op type='new' key='/disk/a' size='{value}'/>").changes
        self.assertEqual(change.attributes["size"], value)
        return change.size

    def test_numbers(self) -> None:
        self.assertEqual(self.sizeOf("0"), 0)
        self.assertEqual(self.sizeOf("1024"), 1024)
        self.assertEqual(self.sizeOf(" 7 "), 7)

    def test_hugeNumber(self) -> None:
        """Beyond 64 bits is still a number; beyond what Python converts is not."""
        self.assertEqual(self.sizeOf("9" * 30), int("9" * 30))
        self.assertIsNone(self.sizeOf("9" * 5000))
        notification = push(f"<op size='{'9' * 30}'/>")
        self.assertEqual(
            json.loads(encodeJSONLine(notification))["changes"][0]["size"],
            int("9" * 30),
        )

    def test_notANumber(self) -> None:
        for value in ["", "abc", "12abc", "-5", "1e3", "1.5", "0x10", "١٢", "²"]:
            self.assertIsNone(self.sizeOf(value), value)


class DiskPathTests(SynchronousTestCase):
    """The disk: and /disk prefixes go; paths start with /."""

    def test_prefixes(self) -> None:
        cases = {
            "disk:/Docs/a.txt": "/Docs/a.txt",
            "/disk/Docs/a.txt": "/Docs/a.txt",
            "Docs/a.txt": "/Docs/a.txt",
            "/Docs/a.txt": "/Docs/a.txt",
            "disk:Docs": "/Docs",
            "disk:": "/",
            "disk:/": "/",
            "/disk": "/",
            "/disk/": "/",
            "/diskette/a": "/diskette/a",
            "/disk/Документы/Отчёт за ноябрь.odt": "/Документы/Отчёт за ноябрь.odt",
            "trash:/Old": "trash:/Old",
            "app:/App data": "app:/App data",
            "a:b.txt": "/a:b.txt",
            "": "",
        }
        for key, expected in cases.items():
            self.assertEqual(diskPath(key), expected, key)
        self.assertEqual(diskPath(None), "")

    def test_fromOfAMove(self) -> None:
        """from gets the same treatment; absent, it is None."""
        [change] = push("<op type='moved' key='disk:/b' from='disk:/a'/>").changes
        self.assertEqual((change.fromPath, change.path), ("/a", "/b"))
        [change] = push("<op type='moved' key='/disk/b'/>").changes
        self.assertIsNone(change.fromPath)


class SummaryTests(SynchronousTestCase):
    """The log line stays one short readable line, whatever the paths."""

    def test_controlCharactersStripped(self) -> None:
        """Control characters are left out; line breaks become spaces."""
        notification = push(
            "<op type='new' key='/disk/a&#10;b&#13;c&#9;d\u0085e\u202ef\u2028g'/>"
        )
        summary = notification.summary()
        self.assertEqual(
            summary, "Disk changed: id='p1' 1 change: created /a b c def g"
        )
        self.assertEqual(len(summary.splitlines()), 1)
        # The path itself is kept as sent.
        self.assertEqual(
            notification.changes[0].path, "/a\nb\rc\td\u0085e\u202ef\u2028g"
        )
        # Built by hand, a change may hold what XML cannot carry.
        change = Change("new\x1b", "/x\x1b[31m\x00", None, None, None, None, {})
        self.assertEqual(change.describe(), "new /x[31m")

    def test_bounded(self) -> None:
        """Many changes with long paths: a few are named, the rest counted."""
        longName = "Очень длинное имя " * 50
        inner = "".join(
            f"<op type='new' key='/disk/{i} {longName}'/>" for i in range(1000)
        )
        summary = push(inner).summary()
        self.assertLess(len(summary), 1000)
        self.assertEqual(summary.count("created"), SUMMARY_CHANGES)
        self.assertTrue(summary.endswith(f"(+{1000 - SUMMARY_CHANGES} more)"))
        self.assertIn("\u2026", summary)

    def test_longTypeCut(self) -> None:
        summary = push(f"<op type='{'x' * 500}' key='/disk/a'/>").summary()
        self.assertLess(len(summary), 100)


class ValueTests(SynchronousTestCase):
    """Change is a frozen value; Notification stays compatible."""

    def test_frozen(self) -> None:
        [change] = push("<op type='new' key='/disk/a'/>").changes
        with self.assertRaises(AttributeError):
            change.path = "/b"  # type: ignore[misc]

    def test_positionalConstruction(self) -> None:
        """A Notification built positionally, as before changes existed."""
        child = PushChild.fromElement(parseXml(b"<op type='deleted' key='disk:/x'/>"))
        notification = Notification(
            "i", "s", "r", 1.0, "query", {}, (child,), "<iq/>", "login"
        )
        self.assertEqual([c.path for c in notification.changes], ["/x"])
        self.assertEqual(encodeJSONLine(notification), referenceLine(notification))

    def test_childrenThatAreNotPushChildren(self) -> None:
        """Children built by hand from anything: ignored, not raised on."""
        notification = Notification(
            "i",
            "s",
            "r",
            1.0,
            "query",
            {},
            ("text", None),
            "<iq/>",  # type: ignore[arg-type]
        )
        self.assertEqual(notification.changes, ())

    def test_toJSONKeys(self) -> None:
        self.assertEqual(
            list(Change("t", "/p", None, None, None, None, {}).toJSON()),
            ["type", "path", "from", "fid", "size", "resource_type", "attributes"],
        )


# -- any payload --------------------------------------------------------------

_names = st.sampled_from(["op", "diff", "query", "x", "opx", "Op", "item"])
_uris = st.sampled_from([None, "yandex:push:disk", "urn:other"])
_attributeNames = st.sampled_from(
    ["type", "key", "from", "fid", "size", "resource_type", "md5", "other"]
)
_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]),
    max_size=12,
)


@st.composite
def elements(draw: Any, depth: int = 0) -> domish.Element:
    """A random element, random attributes, random children."""
    element = domish.Element((draw(_uris), draw(_names)))
    for name, value in draw(
        st.dictionaries(
            _attributeNames,
            st.one_of(_text, st.integers(-(10**40), 10**40).map(str)),
            max_size=5,
        )
    ).items():
        element[name] = value
    if depth < 3:
        for child in draw(st.lists(elements(depth + 1), max_size=3)):
            element.addChild(child)
    if draw(st.booleans()):
        element.addContent(draw(_text))
    return element


class AnyPayloadTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(st.lists(elements(), max_size=4))
    def test_neverRaises(self, children: list[domish.Element]) -> None:
        """Any payload gives a tuple of changes, a JSON line and a summary."""
        iq = domish.Element(("jabber:client", "iq"))
        iq["id"] = "any"
        query = iq.addElement((NS_DISK_PUSH, "query"))
        for child in children:
            query.addChild(child)
        # Through the parser, as a push arrives.
        notification = Notification.fromStanza(parseXml(iq.toXml().encode()), 0.5)
        changes = notification.changes
        self.assertIsInstance(changes, tuple)
        for change in changes:
            self.assertIsInstance(change, Change)
            self.assertTrue(change.path == "" or change.path.startswith("/"))
            self.assertTrue(change.size is None or change.size >= 0)
        line = encodeJSONLine(notification)
        self.assertEqual(line, referenceLine(notification))
        self.assertEqual(len(json.loads(line)["changes"]), len(changes))
        summary = notification.summary()
        self.assertEqual(len(summary.splitlines()), 1)


# -- the local server's diffs -------------------------------------------------


def received(sample: diffs.SamplePush) -> Notification:
    """A sample push as the client receives it."""
    attributes = " ".join(f"{k}='{v}'" for k, v in sample.attributes.items())
    return push(sample.childrenXml, attributes)


class DiffsTests(SynchronousTestCase):
    """The local server's realistic diffs parse into what they mean."""

    def test_samplePushes(self) -> None:
        """Created, changed, moved, deleted, published, Cyrillic and spaces."""
        samples = diffs.samplePushes(firstRevision=10)
        self.assertEqual(
            [s.attributes["new"] for s in samples], [str(10 + i) for i in range(6)]
        )
        self.assertEqual(samples[0].attributes["old"], "9")
        described = [[c.describe() for c in received(s).changes] for s in samples]
        self.assertEqual(
            described,
            [
                ["created /Документы", "created /Документы/Отчёт за ноябрь.odt"],
                [
                    "changed /Документы/Отчёт за ноябрь.odt",
                    "moved /Photos/2026-11-24 12-00-00.jpg"
                    " -> /Photos/Море на закате.jpg",
                ],
                ["deleted /Old drafts", "deleted /notes.txt"],
                [
                    "created /Photos/2026-11-25 09-30-00.jpg",
                    "created /Photos/2026-11-25 09-30-05.jpg",
                ],
                ["published /Photos"],
                ["unpublished /Photos"],
            ],
        )

    def test_fieldsLookReal(self) -> None:
        """Files have size and hashes, folders none; a move keeps its fid."""
        [first, second] = [received(s).changes for s in diffs.samplePushes()[:2]]
        folder, document = first
        self.assertEqual((folder.resourceType, folder.size), ("dir", None))
        self.assertNotIn("md5", folder.attributes)
        self.assertEqual((document.resourceType, document.size), ("file", 48213))
        self.assertEqual(len(document.attributes["sha256"]), 64)
        changedDocument, move = second
        self.assertEqual(changedDocument.fid, document.fid)
        self.assertNotEqual(
            changedDocument.attributes["md5"], document.attributes["md5"]
        )
        self.assertEqual(
            move.fid, diffs.created("/Photos/2026-11-24 12-00-00.jpg")["fid"]
        )

    def test_diffElement(self) -> None:
        """diffElement is a yandex:push:disk <diff> of <op>s, keys in order."""
        element = diffs.diffElement([diffs.deleted("/a b", prefix="disk:")])
        self.assertEqual((element.uri, element.name), (NS_DISK_PUSH, "diff"))
        [op] = element.elements()
        self.assertEqual(list(op.attributes)[:2], ["type", "key"])
        self.assertEqual(op["key"], "disk:/a b")

    def test_escaped(self) -> None:
        """Quotes, ampersands and angle brackets in names survive."""
        sample = diffs.SamplePush(
            diffs.diffAttributes(1, 2), diffs.diffXml([diffs.created("/a'b&<c>\".txt")])
        )
        [change] = received(sample).changes
        self.assertEqual(change.path, "/a'b&<c>\".txt")

    def test_parseChange(self) -> None:
        """TYPE:PATH, a folder with a trailing slash, a move with ->."""
        self.assertEqual(
            diffs.parseChange("new:/Docs/a.txt"), diffs.created("/Docs/a.txt")
        )
        self.assertEqual(
            diffs.parseChange("deleted:/Old/"), diffs.deleted("/Old", folder=True)
        )
        self.assertEqual(
            diffs.parseChange("moved:/Old name.txt->/New name.txt"),
            diffs.moved("/Old name.txt", "/New name.txt"),
        )
        self.assertEqual(diffs.parseChange("changed:/")["key"], "/disk")

    def test_parseChangeErrors(self) -> None:
        """A word that is not a change says how to write one."""
        for text in ["new", ":/a", "new:", ""]:
            with self.assertRaises(ValueError) as caught:
                diffs.parseChange(text)
            self.assertIn("write TYPE:PATH", str(caught.exception))
