"""
``/metrics``, ``/livez`` and ``/readyz`` over HTTP, with ``twisted.web``.

``/metrics`` is the Prometheus text format. ``/livez`` answers 200 while
the reactor runs: it is the reactor that serves the request, so answering
at all is the proof. ``/readyz`` answers 200 once every account has
subscribed or given up, else 503; its body has the counts either way
(``3/5 subscribed, 0 gave up``), for a person reading a probe's failure.

The site is quiet: no access log line per scrape (Prometheus scrapes every
few seconds, forever). Where to listen is a Twisted server endpoint string
(``tcp:9108:interface=127.0.0.1``), so a Unix socket or TLS need no code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from yadiskpush.errors import ConfigurationError, ServiceStopped
from yadiskpush.logs import Logger

#: The text format every Prometheus server reads. prometheus-client 0.26
#: labels its output 1.0.0, which differs only for names outside the
#: classic character set; ours are all classic.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: ``readiness()``: whether every account has subscribed or given up, and a
#: line with the counts (``(False, "3/5 subscribed, 0 gave up")``).
Readiness = Callable[[], "tuple[bool, str]"]


class Renders(Protocol):
    def render(self) -> bytes: ...


class MetricsEndpointError(ConfigurationError):
    """The ``--metrics`` endpoint string cannot be parsed."""

    def __init__(self, description: str, detail: str) -> None:
        super().__init__(
            f"--metrics {description!r} is not a server endpoint: {detail}"
        )
        self.description = description


class MetricsListenError(ConfigurationError):
    """The metrics endpoint cannot listen (the port is in use, say)."""

    def __init__(self, description: str, detail: str) -> None:
        super().__init__(f"cannot serve metrics on {description}: {detail}")
        self.description = description


class _Text(Resource):
    isLeaf = True

    def __init__(self, render: Callable[[], tuple[int, str, bytes]]) -> None:
        super().__init__()
        self._render = render

    def render_GET(self, request: Request) -> bytes:
        code, contentType, body = self._render()
        request.setResponseCode(code)
        request.setHeader(b"content-type", contentType.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


class MetricsResource(Resource):
    """
    The root of the metrics site: ``/metrics``, ``/livez``, ``/readyz``;
    anything else is 404.

    :param metrics: gives the Prometheus text (a
        :class:`~yadiskpush.metrics.collector.FleetMetrics`).
    :param readiness: says whether the process is ready, and the counts.
    """

    def __init__(self, metrics: Renders, readiness: Readiness) -> None:
        super().__init__()
        self.metrics = metrics
        self.readiness = readiness
        self.putChild(b"metrics", _Text(self._metrics))
        self.putChild(b"livez", _Text(lambda: (200, "text/plain", b"ok\n")))
        self.putChild(b"readyz", _Text(self._ready))

    def getChild(self, path: bytes, request: Request) -> IResource:
        # Resource's own 404 page is deprecated (it does not escape).
        return notFound()

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, self.metrics.render()

    def _ready(self) -> tuple[int, str, bytes]:
        ready, counts = self.readiness()
        body = f"{'ready' if ready else 'not ready'}: {counts}\n".encode()
        return (200 if ready else 503), "text/plain; charset=utf-8", body


class QuietSite(Site):
    """A ``Site`` that writes no access log line per request."""

    noisy = False

    def log(self, request: Request) -> None:
        pass


def checkEndpoint(description: str, reactor: Any = None) -> Any:
    """
    Parse a server endpoint string without listening (for option checks).

    :returns: the endpoint.
    :raises MetricsEndpointError: if ``description`` is not one.
    """
    try:
        return serverFromString(reactor, description)
    except Exception as e:
        raise MetricsEndpointError(description, str(e) or type(e).__name__) from None


def listenMetrics(
    description: str, metrics: Renders, readiness: Readiness, reactor: Any
) -> defer.Deferred[IListeningPort]:
    """
    Serve ``/metrics``, ``/livez`` and ``/readyz`` on the server endpoint
    ``description`` (``tcp:9108:interface=127.0.0.1``).

    :returns: a Deferred firing with the listening port (stop it with
        ``stopListening()``), or failing with :class:`MetricsListenError`
        (whose message is the one line to show) if it cannot listen, or
        :class:`MetricsEndpointError` for a bad endpoint string.
    """
    try:
        endpoint = checkEndpoint(description, reactor)
    except MetricsEndpointError:
        return defer.fail()
    site = QuietSite(MetricsResource(metrics, readiness))
    d: defer.Deferred[IListeningPort] = endpoint.listen(site)

    def failed(reason: Failure) -> Failure:
        value = reason.value
        detail = getattr(value, "socketError", None) or value
        detail = getattr(detail, "strerror", None) or str(detail)
        return Failure(MetricsListenError(description, str(detail).lower()))

    d.addErrback(failed)
    return d


class MetricsService(service.Service):
    """
    Listens for metrics while running; stops listening at stop.

    A failure to listen is logged as one line (no traceback) and reported
    by :meth:`whenListening`, so the application can exit 78.

    :param description: the server endpoint string.
    :param metrics: gives the Prometheus text.
    :param readiness: says whether the process is ready, and the counts.
    :param reactor: the reactor to listen with.
    """

    _log = Logger()

    def __init__(
        self, description: str, metrics: Renders, readiness: Readiness, reactor: Any
    ) -> None:
        self.description = description
        self.metrics = metrics
        self.readiness = readiness
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self._listening: defer.Deferred[IListeningPort] | None = None
        self._waiters: list[defer.Deferred[IListeningPort]] = []
        self._outcome: Any = None

    def startService(self) -> None:
        service.Service.startService(self)
        self._outcome = None
        self._listening = d = listenMetrics(
            self.description, self.metrics, self.readiness, self.reactor
        )
        d.addBoth(self._settled)

    def _settled(self, result: Any) -> None:
        self._listening = None
        if isinstance(result, Failure):
            self._log.error("{problem}", problem=str(result.value))
        elif not self.running:
            # Stopped while the endpoint was still setting up.
            result.stopListening()
            result = Failure(ServiceStopped())
        else:
            self.port = result
            self._log.info(
                "Serving metrics on {description}", description=self.description
            )
        self._outcome = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def whenListening(self) -> defer.Deferred[IListeningPort]:
        """
        Fire with the listening port once listening (now, if so); fail with
        :class:`MetricsListenError` if it cannot (the service has logged
        that one line already), with
        :class:`~yadiskpush.errors.ServiceStopped` if stopped first.
        """
        if self._outcome is not None:
            if isinstance(self._outcome, Failure):
                return defer.fail(self._outcome)
            return defer.succeed(self._outcome)
        d: defer.Deferred[IListeningPort] = defer.Deferred()
        self._waiters.append(d)
        return d

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        port, self.port = self.port, None
        self._outcome = None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)
