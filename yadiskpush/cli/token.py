"""
``yadiskpush token``: get an OAuth token with the device flow and write the
token file; ``yadiskpush token refresh``: renew the token in a file.

The client secret is read from a file or ``$YADISKPUSH_CLIENT_SECRET``,
never from the command line, where any user of the machine can read it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from twisted.internet import defer

from yadiskpush.cli.main import (
    EX_CONFIG,
    EX_NOPERM,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
)
from yadiskpush.errors import ConfigurationError
from yadiskpush.oauth.client import (
    DEFAULT_API_URL,
    DEFAULT_OAUTH_URL,
    OAuthClient,
    OAuthError,
    checkURL,
)
from yadiskpush.oauth.tokenfile import TokenFile, readTokenFile, writeTokenFile
from yadiskpush.secret import Secret

CLIENT_SECRET_VARIABLE = "YADISKPUSH_CLIENT_SECRET"

# OAuth error codes -> exit status.
_EXIT_STATUS = {
    "access_denied": EX_NOPERM,
    "invalid_client": EX_CONFIG,
    "invalid_grant": EX_NOPERM,
    "unauthorized": EX_NOPERM,
    "expired_token": EX_TEMPFAIL,
    "timeout": EX_TEMPFAIL,
    "tls": EX_UNAVAILABLE,
    "bad_response": EX_UNAVAILABLE,
}


def defaultTokenPath(environ: dict[str, str] | None = None) -> str:
    """``$XDG_CONFIG_HOME/yadiskpush/token.json``, else under ``~/.config``."""
    environ = dict(os.environ) if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(
        os.path.expanduser("~"), ".config"
    )
    return os.path.join(base, "yadiskpush", "token.json")


def addParser(subcommands: Any) -> None:
    """Add ``token`` (and its ``refresh``) to the script's subcommands."""
    parser = subcommands.add_parser(
        "token",
        help="get an OAuth token with the device flow and write the token file",
        description=(
            "Get an OAuth token for Yandex.Disk with the device flow: open the "
            "URL shown on any device, enter the code, and the token file is "
            "written. The client secret comes from --client-secret-file or "
            f"${CLIENT_SECRET_VARIABLE}, never from the command line."
        ),
    )
    parser.add_argument("--client-id", help="the OAuth application's ClientID")
    parser.add_argument(
        "--client-secret-file",
        metavar="PATH",
        help=f"file holding the client secret (else ${CLIENT_SECRET_VARIABLE})",
    )
    parser.add_argument(
        "--out",
        metavar="PATH",
        help="where to write the token file (default: " + defaultTokenPath() + ")",
    )
    parser.add_argument(
        "--oauth-url",
        default=DEFAULT_OAUTH_URL,
        metavar="URL",
        help="the OAuth server (https; http only to a loopback host; "
        "default: %(default)s); kept in the token file for refreshing",
    )
    parser.add_argument(
        "--api-url",
        default=DEFAULT_API_URL,
        metavar="URL",
        help="the Disk API, asked for the token's login (default: %(default)s)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PATH",
        help="trust only the CAs in this PEM file (default: the system's)",
    )
    parser.add_argument(
        "--device-name",
        default=None,
        help="the name the OAuth server shows for this device",
    )
    parser.set_defaults(run=getToken)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    refresh = actions.add_parser(
        "refresh",
        help="renew the token in a token file, in place",
        description=(
            "Exchange the refresh token in a token file for a new access "
            "token and write it back; the other fields are kept."
        ),
    )
    refresh.add_argument(
        "--token-file",
        required=True,
        metavar="PATH",
        help="the JSON token file yadiskpush token wrote; rewritten in place",
    )
    refresh.add_argument(
        "--ca-file",
        metavar="PATH",
        help="trust only the CAs in this PEM file (default: the system's)",
    )
    refresh.add_argument(
        "--api-url",
        default=DEFAULT_API_URL,
        metavar="URL",
        help="the Disk API (default: %(default)s)",
    )
    refresh.set_defaults(run=refreshToken)


class _Exit(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _readClientSecret(path: str | None) -> Secret:
    if path is not None:
        try:
            with open(path, encoding="utf-8") as secretFile:
                value = secretFile.read(4096).strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or "not readable UTF-8 text"
            raise _Exit(
                EX_CONFIG, f"cannot read the client secret file {path}: {reason}"
            ) from None
        if not value:
            raise _Exit(EX_CONFIG, f"the client secret file {path} is empty")
    else:
        value = os.environ.get(CLIENT_SECRET_VARIABLE, "").strip()
        if not value:
            raise _Exit(
                EX_USAGE,
                "the client secret is needed: give --client-secret-file PATH or "
                f"set ${CLIENT_SECRET_VARIABLE}",
            )
    try:
        return Secret(value.splitlines()[0])
    except ConfigurationError:
        raise _Exit(EX_CONFIG, "the client secret is not usable") from None


def _client(reactor: Any, oauthUrl: str, apiUrl: str, caFile: str | None) -> Any:
    try:
        checkURL(oauthUrl, "--oauth-url")
        checkURL(apiUrl, "--api-url")
    except ConfigurationError as e:
        raise _Exit(EX_USAGE, e.message) from None
    try:
        return OAuthClient(oauthUrl, apiUrl, reactor=reactor, caFile=caFile)
    except ConfigurationError as e:  # the CA file
        raise _Exit(EX_CONFIG, e.message) from None


def _oauthExit(error: OAuthError) -> _Exit:
    status = _EXIT_STATUS.get(error.code)
    if status is None:
        status = EX_TEMPFAIL if error.temporary else EX_UNAVAILABLE
    return _Exit(status, error.message)


async def _guard(parser: argparse.ArgumentParser, work: Any) -> None:
    """Run ``work``; turn each expected failure into a sentence and status."""
    try:
        await work
    except _Exit as e:
        if e.status == EX_USAGE:
            parser.print_usage(sys.stderr)
        sys.stderr.write(f"yadiskpush: {e.message}\n")
        raise SystemExit(e.status) from None
    except OAuthError as e:
        failure = _oauthExit(e)
        sys.stderr.write(f"yadiskpush: {failure.message}\n")
        raise SystemExit(failure.status) from None
    except ConfigurationError as e:
        sys.stderr.write(f"yadiskpush: {e.message}\n")
        raise SystemExit(EX_CONFIG) from None
    except defer.CancelledError:
        # Ctrl-C (or SIGTERM) while waiting: the shutdown cancelled the work.
        sys.stderr.write("yadiskpush: stopped; no token file was written\n")
        raise SystemExit(130) from None


def getToken(
    reactor: Any, arguments: argparse.Namespace, parser: argparse.ArgumentParser
) -> Any:
    """``yadiskpush token``: the device flow, the login, the file."""
    return _guard(parser, _getToken(reactor, arguments))


async def _getToken(reactor: Any, arguments: argparse.Namespace) -> None:
    if not arguments.client_id:
        raise _Exit(EX_USAGE, "--client-id is needed (the application's ClientID)")
    clientSecret = _readClientSecret(arguments.client_secret_file)
    out = os.path.expanduser(arguments.out or defaultTokenPath())
    client = _client(reactor, arguments.oauth_url, arguments.api_url, arguments.ca_file)
    deviceCode = await client.requestDeviceCode(
        arguments.client_id, arguments.device_name
    )
    _say(f"Open {deviceCode.verificationUrl} and enter the code: {deviceCode.userCode}")
    _say(
        f"Waiting for you to allow access (the code is valid for "
        f"{deviceCode.expiresIn / 60:.0f} minutes; Ctrl-C to stop)..."
    )
    polling = client.pollForToken(deviceCode, arguments.client_id, clientSecret)
    stopOnInterrupt = reactor.addSystemEventTrigger(
        "before", "shutdown", polling.cancel
    )
    try:
        grant = await polling
    finally:
        reactor.removeSystemEventTrigger(stopOnInterrupt)
    login = await client.fetchLogin(grant.accessToken)
    tokenFile = TokenFile(
        accessToken=grant.accessToken,
        refreshToken=grant.refreshToken,
        expiresAt=None if grant.expiresIn is None else time.time() + grant.expiresIn,
        login=login,
        clientId=arguments.client_id,
        clientSecret=clientSecret,
        oauthUrl=client.oauthUrl,
    )
    writeTokenFile(out, tokenFile)
    _say(f"Wrote the token for {login} to {out}")
    _say(f"Run: twistd yadiskpush --token-file {out}")


def refreshToken(
    reactor: Any, arguments: argparse.Namespace, parser: argparse.ArgumentParser
) -> Any:
    """``yadiskpush token refresh``: renew the file's token in place."""
    return _guard(parser, _refreshToken(reactor, arguments))


async def _refreshToken(reactor: Any, arguments: argparse.Namespace) -> None:
    path = arguments.token_file
    tokenFile, warnings = readTokenFile(path)
    for warning in warnings:
        sys.stderr.write(f"yadiskpush: warning: {warning}\n")
    if not tokenFile.canRefresh():
        raise _Exit(
            EX_CONFIG,
            f"the token file {path} has no refresh token (or no client id, "
            "client secret or OAuth URL); run yadiskpush token",
        )
    assert tokenFile.refreshToken is not None and tokenFile.clientSecret is not None
    assert tokenFile.clientId is not None and tokenFile.oauthUrl is not None
    client = _client(reactor, tokenFile.oauthUrl, arguments.api_url, arguments.ca_file)
    grant = await client.refresh(
        tokenFile.refreshToken, tokenFile.clientId, tokenFile.clientSecret
    )
    updated = tokenFile.withGrant(
        grant.accessToken, grant.refreshToken, grant.expiresIn, time.time()
    )
    writeTokenFile(path, updated)
    who = f" for {updated.login}" if updated.login else ""
    _say(f"Refreshed the token{who} in {path}")
