"""
``twistd yadiskpush --demo``: the real client against a local server.

The vendor's server cannot be reached from everywhere (and needs an
account), so the demo starts :class:`~yadiskpush.localserver.LocalServer` in
the same process, with a throwaway CA, gets a token from its OAuth stand-in
with the device flow (as ``yadiskpush token`` does, approving the code
itself), points an ordinary :class:`~yadiskpush.service.PushService` at it
and lets the server push a short series of sample changes, each a
``<diff>`` as the vendor sends it (files and folders created, changed,
renamed and deleted; see :func:`~yadiskpush.localserver.diffs.samplePushes`),
so the log shows what changed. Everything the client logs is what it logs
against the real server; the sinks (``--json-out``, ``--exec``) work as
usual. ``kill -USR1 PID`` makes the server push one more change.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import tempfile
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from yadiskpush.application import EXIT_SOFTWARE, ExitStatus, PushApplication
from yadiskpush.localserver import LocalServer, NoOpenSession
from yadiskpush.localserver.diffs import samplePushes
from yadiskpush.secret import Secret
from yadiskpush.settings import Settings

DEMO_LOGIN = "demo"
SAMPLE_COUNT = 3
#: The demo's OAuth application, and how often it polls for its token.
DEMO_CLIENT_ID = "yadiskpush-demo"
DEMO_POLL_INTERVAL = 1.0
SAMPLE_INTERVAL = 2.0
PING_INTERVAL = 15.0

#: What the demo server pushes, in turn (SIGUSR1 goes on through the list,
#: then starts over): the first SAMPLE_COUNT create, change, rename and
#: delete.
_SAMPLES = samplePushes()


class DemoService(service.Service):
    """Starts the local server, then the client; stops them in reverse."""

    _log = Logger(namespace="yadiskpush.demo")

    def __init__(self, options: Any, reactor: Any) -> None:
        from yadiskpush.cli.options import buildSinks

        self.options = options
        self.reactor = reactor
        self.buildSinks = buildSinks
        self.token = secrets.token_urlsafe(24)
        self.server = LocalServer(
            {DEMO_LOGIN: self.token}, pingInterval=PING_INTERVAL, reactor=reactor
        )
        self.app: PushApplication | None = None
        self._directory = tempfile.mkdtemp(prefix="yadiskpush-demo-")
        self._revision = itertools.count(1)
        self._samples: task.LoopingCall | None = None
        self._previousHandler: Any = None
        self._oauthPort: Any = None
        self.exitStatus = ExitStatus()

    def startService(self) -> None:
        service.Service.startService(self)
        self.exitStatus.register()
        d = self.server.start()
        d.addCallback(self._serverListening)
        d.addErrback(self._failed)

    @defer.inlineCallbacks
    def _serverListening(self, server: LocalServer) -> Any:
        caFile = str(server.writeCACertificate(os.path.join(self._directory, "ca.pem")))
        self._log.info(
            "Demo server listening on 127.0.0.1: STARTTLS port {port}, TLS port "
            "{tlsPort}; its throwaway CA is {caFile}",
            port=server.starttlsPort,
            tlsPort=server.tlsPort,
            caFile=caFile,
        )
        token = yield self._tokenByDeviceFlow(server, caFile)
        if not self.running:
            return
        settings = Settings(
            login=DEMO_LOGIN,
            token=token,
            host="localhost",
            port=server.starttlsPort,
            tlsPort=server.tlsPort,
            caFile=caFile,
            compress=bool(self.options["compress"]),
            logTraffic=bool(self.options["log-traffic"]),
            idleTimeout=self.options["idle-timeout"],
            pingTimeout=self.options["ping-timeout"],
            **(
                {"resource": self.options["resource"]}
                if self.options["resource"]
                else {}
            ),
        )
        from yadiskpush.service import PushService

        push = PushService(settings, reactor=self.reactor)
        self.app = PushApplication(push, self.buildSinks(self.options, self.reactor))
        self.app.startService()
        push.whenReady().addCallback(self._pushSamples)
        self._previousHandler = signal.signal(
            signal.SIGUSR1,
            lambda *_: self.reactor.callFromThread(self.pushSample),
        )

    @defer.inlineCallbacks
    def _tokenByDeviceFlow(self, server: LocalServer, caFile: str) -> Any:
        """
        Get the demo's token as ``yadiskpush token`` gets one, from the local
        server's OAuth stand-in: the device code, the polls, an approval
        (here by the demo itself, a second later), the login look-up.
        """
        from yadiskpush.localserver.oauth import OAuthStandIn, listenOAuth
        from yadiskpush.oauth.client import OAuthClient

        clientSecret = Secret(secrets.token_urlsafe(16))
        standIn = OAuthStandIn(
            server.accounts,
            {DEMO_CLIENT_ID: clientSecret.reveal()},
            self.reactor,
            interval=DEMO_POLL_INTERVAL,
        )
        self._oauthPort = yield listenOAuth(self.reactor, standIn, server.tlsOptions)
        url = f"https://localhost:{self._oauthPort.getHost().port}"
        client = OAuthClient(
            url, url, reactor=self.reactor, caFile=caFile, timeout=10.0
        )
        code = yield client.requestDeviceCode(DEMO_CLIENT_ID)
        self._log.info(
            "Demo token, as yadiskpush token gets one: open {url} and enter the "
            "code {code} (the demo approves it itself)",
            url=code.verificationUrl,
            code=code.userCode,
        )
        self.reactor.callLater(
            DEMO_POLL_INTERVAL, standIn.approve, code.userCode, DEMO_LOGIN
        )
        grant = yield client.pollForToken(code, DEMO_CLIENT_ID, clientSecret)
        login = yield client.fetchLogin(grant.accessToken)
        self._log.info(
            "Demo token granted for {login}; the Disk API names its owner", login=login
        )
        return grant.accessToken

    def _pushSamples(self, _: object) -> None:
        self._log.info(
            "Demo server will push {count} sample changes; kill -USR1 {pid} "
            "pushes one more",
            count=SAMPLE_COUNT,
            pid=os.getpid(),
        )
        self._samples = task.LoopingCall(self.pushSample)
        self._samples.clock = self.reactor
        d = self._samples.start(SAMPLE_INTERVAL, now=False)
        d.addErrback(self._failed)

    def pushSample(self) -> defer.Deferred[Any]:
        """Make the server push one sample change."""
        revision = next(self._revision)
        if self._samples is not None and revision >= SAMPLE_COUNT:
            if self._samples.running:
                self._samples.stop()
        sample = _SAMPLES[(revision - 1) % len(_SAMPLES)]
        attributes = dict(sample.attributes, old=str(revision - 1), new=str(revision))
        d = self.server.push(DEMO_LOGIN, attributes, sample.childrenXml)
        d.addErrback(lambda f: f.trap(NoOpenSession))
        return d

    def _failed(self, reason: Any) -> None:
        # Not a configuration mistake (nothing to fix in the options): the
        # process stops with EX_SOFTWARE rather than sitting there, a demo
        # that shows nothing.
        self._log.failure("The demo failed; stopping", reason)
        self.exitStatus.code = EXIT_SOFTWARE
        # It may fail while the service starts, before the reactor runs.
        self.reactor.callWhenRunning(self.reactor.stop)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self._previousHandler is not None:
            signal.signal(signal.SIGUSR1, self._previousHandler)
        if self._samples is not None and self._samples.running:
            self._samples.stop()
        if self.app is not None:
            yield self.app.stopService()
        if self._oauthPort is not None:
            yield self._oauthPort.stopListening()
        yield self.server.stop()
        shutil.rmtree(self._directory, ignore_errors=True)
