"""Tests for yadiskpush.connection.sasl: the X-YANDEX-OAUTH payload and initializer."""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber import sasl as twistedSASL

from tests.support import connectedStream, sentElements
from yadiskpush.connection.sasl import YandexOAuth, YandexOAuthInitializer, oauthPayload
from yadiskpush.errors import AuthenticationFailed, InsecureAuthenticationRefused
from yadiskpush.secret import Secret

NS_SASL = twistedSASL.NS_XMPP_SASL


class PayloadTests(SynchronousTestCase):
    def test_vendorExample(self) -> None:
        """The payload of the vendor's example encodes to the page's base64."""
        payload = oauthPayload("test", Secret("c4181a7c2cf4521964a72ff57a34a07"))
        self.assertEqual(
            base64.b64encode(payload),
            b"dGVzdABjNDE4MWE3YzJjZjQ1MjE5NjRhNzJmZjU3YTM0YTA3",
        )

    def test_utf8Login(self) -> None:
        """A non-ASCII login is sent as UTF-8 before the NUL byte."""
        payload = oauthPayload("тест", Secret("t"))
        self.assertEqual(payload, "тест".encode() + b"\0t")

    def test_mechanismReprHidesToken(self) -> None:
        """The mechanism's repr names the login, never the token."""
        mechanism = YandexOAuth("test", Secret("sekrit-token"))
        self.assertNotIn("sekrit", repr(mechanism))
        self.assertIn("test", repr(mechanism))

    def test_challengeGetsEmptyResponse(self) -> None:
        """An unexpected challenge is answered without repeating the token."""
        self.assertEqual(YandexOAuth("test", Secret("tok")).getResponse(b"x"), b"")


class InitializerTests(SynchronousTestCase):
    def _features(self, xs: object, mechanisms: list[str] | None) -> None:
        from twisted.words.xish import domish

        element = domish.Element((NS_SASL, "mechanisms"))
        for name in mechanisms or []:
            element.addElement("mechanism", content=name)
        xs.features = {(NS_SASL, "mechanisms"): element}  # type: ignore[attr-defined]

    def test_emptyMechanismsStillSendsAuth(self) -> None:
        """An empty mechanisms list still sends X-YANDEX-OAUTH with the payload."""
        xs, transport = connectedStream()
        self._features(xs, [])
        YandexOAuthInitializer(xs, required=True).initialize()
        [auth] = sentElements(transport.value())
        self.assertEqual((auth.uri, auth.name), (NS_SASL, "auth"))
        self.assertEqual(auth["mechanism"], "X-YANDEX-OAUTH")
        self.assertEqual(
            base64.b64decode(str(auth)), b"test\0c4181a7c2cf4521964a72ff57a34a07"
        )

    def test_missingMechanismsStillSendsAuth(self) -> None:
        """A server that leaves out <mechanisms/> entirely still gets the auth."""
        xs, transport = connectedStream()
        xs.features = {}
        YandexOAuthInitializer(xs, required=True).initialize()
        [auth] = sentElements(transport.value())
        self.assertEqual(auth["mechanism"], "X-YANDEX-OAUTH")

    def test_otherMechanismsIgnored(self) -> None:
        """Even when the server lists PLAIN, the Yandex mechanism is used."""
        xs, transport = connectedStream()
        self._features(xs, ["PLAIN", "DIGEST-MD5"])
        YandexOAuthInitializer(xs, required=True).initialize()
        [auth] = sentElements(transport.value())
        self.assertEqual(auth["mechanism"], "X-YANDEX-OAUTH")

    def test_refusesWithoutTLS(self) -> None:
        """On an unencrypted stream nothing is sent and the attempt fails."""
        xs, transport = connectedStream(encrypted=False)
        self._features(xs, [])
        d = YandexOAuthInitializer(xs, required=True).initialize()
        self.failureResultOf(d, InsecureAuthenticationRefused)
        self.assertEqual(transport.value(), b"")

    def test_failureNamesCondition(self) -> None:
        """A <failure/> fails with AuthenticationFailed naming the condition."""
        xs, transport = connectedStream()
        self._features(xs, [])
        d = YandexOAuthInitializer(xs, required=True).initialize()
        xs.dataReceived(
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/>"
            b"<text>bad token</text></failure>"
        )
        error = self.failureResultOf(d, AuthenticationFailed).value
        self.assertEqual(error.condition, "not-authorized")
        self.assertTrue(error.fatal)
        self.assertIn("bad token", str(error))
        self.assertIn("new OAuth token", str(error))
        self.assertNotIn("c4181a7c", str(error))

    def test_successRestartsStream(self) -> None:
        """<success/> resets the stream and sends a fresh header."""
        from twisted.words.protocols.jabber.xmlstream import Reset

        xs, transport = connectedStream()
        self._features(xs, [])
        d = YandexOAuthInitializer(xs, required=True).initialize()
        transport.clear()
        xs.dataReceived(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        self.assertIs(self.successResultOf(d), Reset)
        self.assertTrue(transport.value().startswith(b"<stream:stream"))
