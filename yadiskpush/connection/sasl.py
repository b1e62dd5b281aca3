"""
The ``X-YANDEX-OAUTH`` SASL mechanism and the initializer that uses it.

The vendor's server lists no mechanisms at all (``<mechanisms/>`` is empty),
yet expects ``X-YANDEX-OAUTH``: the base64 of ``login NUL token``. Twisted's
initializer would refuse with ``SASLNoAcceptableMechanism``, so
:class:`YandexOAuthInitializer` overrides only ``setMechanism`` (as Twisted's
own ``DummySASLInitiatingInitializer`` test does) and keeps Twisted's
``start``/``onSuccess``. It also refuses to run on an unencrypted stream and
turns a ``<failure/>`` into :class:`~yadiskpush.errors.AuthenticationFailed`.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.protocols.jabber import sasl
from twisted.words.protocols.jabber.sasl_mechanisms import ISASLMechanism
from twisted.words.xish import domish
from zope.interface import implementer

from yadiskpush.errors import AuthenticationFailed, InsecureAuthenticationRefused
from yadiskpush.secret import Secret

MECHANISM_NAME = "X-YANDEX-OAUTH"


def oauthPayload(login: str, token: Secret) -> bytes:
    """The mechanism's initial response: ``login NUL token``, UTF-8."""
    return login.encode("utf-8") + b"\0" + token.reveal().encode("utf-8")


@implementer(ISASLMechanism)
class YandexOAuth:
    """
    ``X-YANDEX-OAUTH``: everything goes in the initial response, like
    ``PLAIN`` in ``sasl_mechanisms.py`` but with no authorization identity.
    """

    name = MECHANISM_NAME

    def __init__(self, login: str, token: Secret) -> None:
        self.login = login
        self._token = token

    def getInitialResponse(self) -> bytes:
        return oauthPayload(self.login, self._token)

    def getResponse(self, challenge: bytes) -> bytes:
        # The vendor sends no challenge; answer any with an empty response
        # rather than repeat the token.
        return b""

    def __repr__(self) -> str:
        return f"YandexOAuth(login={self.login!r})"


class YandexOAuthInitializer(sasl.SASLInitiatingInitializer):
    """
    SASL initializer that always uses ``X-YANDEX-OAUTH``, whatever the
    server's ``<mechanisms/>`` lists (the vendor lists nothing).
    """

    def setMechanism(self) -> None:
        authenticator = self.xmlstream.authenticator
        if not authenticator.encrypted:
            raise InsecureAuthenticationRefused()
        self.mechanism = YandexOAuth(authenticator.login, authenticator.token)

    def initialize(self) -> defer.Deferred[object]:
        """Authenticate even if ``<mechanisms/>`` is empty or missing."""
        return self.start()

    def start(self) -> defer.Deferred[object]:
        try:
            return super().start()
        except InsecureAuthenticationRefused:
            return defer.fail()

    def onSuccess(self, success: domish.Element) -> None:
        authenticator = self.xmlstream.authenticator
        authenticator._log.debug(
            "Authenticated as {login} (X-YANDEX-OAUTH)", login=authenticator.login
        )
        super().onSuccess(success)

    def onFailure(self, failure: domish.Element) -> None:
        """Turn ``<failure/>`` into :class:`AuthenticationFailed` (fatal)."""
        self.xmlstream.removeObserver("/challenge", self.onChallenge)
        self.xmlstream.removeObserver("/success", self.onSuccess)
        condition = None
        text = ""
        for child in failure.elements():
            if child.name == "text":
                text = str(child).strip()
            elif condition is None:
                condition = child.name
        authenticator = self.xmlstream.authenticator
        self._deferred.errback(
            AuthenticationFailed(
                authenticator.login, condition, authenticator.redact(text) or ""
            )
        )
