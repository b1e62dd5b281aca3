#!/usr/bin/env python3
"""yadiskpush client for the Yandex.Disk push workload (run with the yadiskpush venv).

yadiskpush (the project, installed with a plain non-editable ``pip install``) used ONLY
through its public, documented API, the way a user composes it (docs/composing.rst,
docs/api.rst): ``yadiskpush.PushService``, ``yadiskpush.PushFleet``, ``Settings``,
``Secret``, the sink ``yadiskpush.delivery.sinks.JSONLinesSink`` and
``yadiskpush.application.PushApplication``.

Settings adapted to the stand-in server (flood_server.py), nothing else:
  host=127.0.0.1 (the certificate has IP:127.0.0.1 in its SANs; yadiskpush checks the
  certificate against the host dialled), port=<server port>, tlsPort=0 (the stand-in
  has no direct-TLS port, so the 443 fallback is off), domain=ya.ru (the default),
  caFile=<the throwaway CA> (instead of the system store).  Everything else (random
  resource, timeouts, no compression, stanza cap) is the library default.  The
  stand-in accepts any login with any token but "bad", so every account's token is
  the same harmless string.

Modes
  flood, handshake  one account: one PushService, its pushes to
                PushApplication(push, [JSONLinesSink(file)]) -- exactly the wiring of
                ``twistd yadiskpush --json-out FILE --log-level warn`` (at info a
                log line per push is added; one file per session under
                $YDP_SINK_DIR: one write(2) of one line per push, done before the push
                is acknowledged).
  idle          N accounts (logins test0 .. testN-1), one connection each, all in ONE
                ``yadiskpush.PushFleet``: one ConnectionContext (TLS contexts, the
                handshake gate, the DNS cache) for the whole process, at most
                --concurrency (50) handshakes in flight, gated by the fleet itself (no
                semaphore here); one JSONLinesSink for all the accounts, added with
                fleet.addNotificationObserver(sink.deliver).  Bring-up is timed from
                the first add() to fleet.whenAllSettled() (every account subscribed or
                given up); fleet[login].whenReady() gives each account's own time.

Variants
  --observer      ("yadiskpush-observer") no sink: an observer that only counts the
                  notifications (library cost without the sink's).
  --system-trust  ("yadiskpush-systrust") no caFile: the system trust store, as users
                  run it.  The stand-in's CA is appended to a copy of the system bundle,
                  which OpenSSL's default verify paths read through SSL_CERT_FILE.

After a flood the sink file is read back (outside the measured window): its line count
is reported as "pushes", and "sink_check" says whether every push 1..N is there once,
in order, with the account's login when the line carries one; the file is then removed
(YDP_KEEP_SINK=1 keeps it).

Measurement points (same meaning as the other clients):
  t_create     before Settings/PushService (and sink) are built
  t_connect    just before startService()
  t_sub_sent   from a wokkel XMPPHandler of ours added with PushService.addHandler():
               its connectionInitialized runs right after the built-in
               SubscriptionHandler's, which has just sent the subscription iq (so this
               is a few microseconds AFTER the send; twisted_client.py stamps BEFORE)
  t_sub_result when whenReady() fires (the subscription was answered with a result)
The end of a flood stream (the server closes it after the last ack) is seen through
whenConnectionFailed(); the service is then stopped before it reconnects.  A failed
first attempt (e.g. a certificate from an untrusted CA) makes open_session fail with
the library's own error instead of letting the service retry forever.

Logging: warnings and errors to stderr; the library's info lines are dropped
(YDP_DEBUGLOG=1: everything).  --tune and --zlib are refused.

Environment: YDP_SINK_DIR (default $BENCH_TMP/ydp-sinks), YDP_KEEP_SINK, YDP_DEBUGLOG,
YDP_CPROFILE=<file> (profile the flood window with cProfile, dump the stats there).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import ssl
import statistics
import sys
import time

import common
import wokkel
from twisted.internet import defer, reactor, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from wokkel.subprotocols import XMPPHandler

import twisted
import yadiskpush
from yadiskpush import PushService, Secret, ServiceStopped, Settings
from yadiskpush.application import PushApplication
from yadiskpush.delivery.sinks import JSONLinesSink

HERE = os.path.dirname(os.path.abspath(__file__))
OBSERVER_ONLY = False
WORK = os.environ.get(
    "BENCH_TMP",
    os.path.join(
        os.environ.get("BENCH_DIR", os.path.join(HERE, "..", "..", ".bench")), "tmp"
    ),
)
SINK_DIR = os.environ.get("YDP_SINK_DIR", os.path.join(WORK, "ydp-sinks"))
_seq = [0]


def sinkPath() -> str:
    _seq[0] += 1
    return os.path.join(SINK_DIR, f"ydp-{os.getpid()}-{_seq[0]}.jsonl")


def keepSinks() -> bool:
    return bool(os.environ.get("YDP_KEEP_SINK"))


def ignoreStopped(failure):
    """A waiter of a service we stopped ourselves fails with ServiceStopped."""
    failure.trap(ServiceStopped)


def versions() -> dict:
    import cryptography
    import OpenSSL

    return {
        "yadiskpush": yadiskpush.__version__,
        "twisted": twisted.__version__,
        "wokkel": wokkel.__version__,
        "pyopenssl": OpenSSL.__version__,
        "cryptography": cryptography.__version__,
        "openssl": OpenSSL.SSL.SSLeay_version(OpenSSL.SSL.SSLEAY_VERSION).decode(),
    }


def settingsFor(cfg) -> dict:
    """The Settings fields that fit the stand-in server (see the module docstring)."""
    return {
        "host": cfg.host,
        "port": cfg.port,
        "tlsPort": 0,
        "domain": cfg.domain,
        "caFile": cfg.ca,
    }


class _SubscriptionSent(XMPPHandler):
    """Stamps t_sub_sent: runs after the built-in SubscriptionHandler sent the iq."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def connectionInitialized(self) -> None:
        self.session.t_sub_sent = time.perf_counter()


class Session:
    """One account on its own PushService (flood, handshake), as the plugin wires it."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.pushes = 0
        self.last_version = None
        self.t_create = self.t_connect = self.t_sub_sent = self.t_sub_result = 0.0
        self.is_closed = False
        self.close_reason = None
        self.sink_path = None
        self._closed_waiters: list = []
        settings = Settings(
            login=cfg.login, token=Secret(cfg.token), **settingsFor(cfg)
        )
        self.push = push = PushService(settings, reactor=reactor)
        if OBSERVER_ONLY:
            push.addNotificationObserver(self._count)
            self.top = push  # the service to start and stop
        else:
            self.sink_path = sinkPath()
            self.top = PushApplication(push, [JSONLinesSink(self.sink_path)])
        push.addHandler(_SubscriptionSent(self))

    def _count(self, notification) -> None:
        self.pushes += 1
        self.last_version = notification.attributes.get("version")

    # ---- lifetime --------------------------------------------------------------------
    def start(self) -> defer.Deferred:
        """Start the service; fire when subscribed, fail with the first failure."""
        d: defer.Deferred = defer.Deferred()

        def ready(_jid):
            self.t_sub_result = time.perf_counter()
            if not d.called:
                d.callback(self)

        def failed(error):
            # The first failure: before the subscription (a failed attempt) or the
            # end of the session (the server closed the stream).
            self.is_closed = True
            self.close_reason = error
            if not d.called:
                d.errback(error)
            waiters, self._closed_waiters = self._closed_waiters, []
            for w in waiters:
                w.callback(error)

        self.push.whenReady().addCallbacks(ready, ignoreStopped)
        self.push.whenConnectionFailed().addCallbacks(failed, ignoreStopped)
        self.t_connect = time.perf_counter()
        self.top.startService()
        return d

    def when_closed(self) -> defer.Deferred:
        if self.is_closed:
            return defer.succeed(self.close_reason)
        w: defer.Deferred = defer.Deferred()
        self._closed_waiters.append(w)
        return w

    @defer.inlineCallbacks
    def close(self):
        """stopService(): </stream:stream>, up to closeTimeout for the server's, stop.

        One reactor turn later, not from inside the whenConnectionFailed() callback
        that saw the stream end: the stream's own teardown is still running there."""
        yield task.deferLater(reactor, 0, lambda: None)
        if self.top.running:
            yield self.top.stopService()

    def remove_sink(self) -> None:
        if self.sink_path and os.path.exists(self.sink_path) and not keepSinks():
            os.unlink(self.sink_path)

    def check_sink(self) -> dict:
        """Read the sink file back: one line per push, versions 1..N in order."""
        if self.sink_path is None:
            return {}
        versions, ids, bad, wrongLogin = [], set(), 0, 0
        with open(self.sink_path, "rb") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                ids.add(obj["id"])
                versions.append(int(obj["attributes"]["version"]))
                if obj.get("login", self.cfg.login) != self.cfg.login:
                    wrongLogin += 1
        n = len(versions)
        self.pushes = n
        self.last_version = str(versions[-1]) if versions else None
        ok = (
            bad == 0
            and wrongLogin == 0
            and len(ids) == n
            and versions == list(range(1, n + 1))
        )
        self.remove_sink()
        return {
            "sink_lines": n,
            "sink_bad_lines": bad,
            "sink_unique_ids": len(ids),
            "sink_wrong_login": wrongLogin,
            "sink_check": ok,
            "sink_bytes_per_line": None,
        }


@defer.inlineCallbacks
def open_session(cfg):
    t_create = time.perf_counter()
    s = Session(cfg)
    s.t_create = t_create
    try:
        yield s.start()
    except Exception:
        yield s.close()  # stop retrying
        s.remove_sink()
        raise
    return s


# ---- the three workloads (same JSON keys and meaning as common.py) ------------------
def sleep(secs: float) -> defer.Deferred:
    return task.deferLater(reactor, secs, lambda: None)


@defer.inlineCallbacks
def flood(cfg):
    s = yield open_session(cfg)
    prof = None
    if os.environ.get("YDP_CPROFILE"):
        import cProfile

        prof = cProfile.Profile()
    c0, w0 = common.cpu_s(), time.perf_counter()
    if prof:
        prof.enable()
    yield s.when_closed()
    if prof:
        prof.disable()
    c1, w1 = common.cpu_s(), time.perf_counter()
    if prof:
        prof.dump_stats(os.environ["YDP_CPROFILE"])
    reason = str(s.close_reason)
    yield s.close()  # stops the reconnect timer; closes the sink file
    res = {
        "client_cpu_s": round(c1 - c0, 4),
        "client_wall_s": round(w1 - w0, 4),
        "handshake_ms": round((s.t_sub_sent - s.t_connect) * 1000, 3),
        "end_reason": reason,
    }
    if s.sink_path:
        size = os.path.getsize(s.sink_path)
        res.update(s.check_sink())
        res["sink_bytes_per_line"] = round(size / max(res["sink_lines"], 1), 1)
    res.update({"pushes": s.pushes, "last_version": s.last_version})
    return res


@defer.inlineCallbacks
def handshake(cfg):
    sent, result, construct = [], [], []
    for _ in range(cfg.count):
        s = yield open_session(cfg)
        construct.append((s.t_connect - s.t_create) * 1000)
        sent.append((s.t_sub_sent - s.t_connect) * 1000)
        result.append((s.t_sub_result - s.t_connect) * 1000)
        yield s.close()
        s.remove_sink()
    return {
        "count": cfg.count,
        "first_ms_to_sub_sent": round(sent[0], 3),
        "median_ms_to_sub_sent": round(statistics.median(sent), 3),
        "median_ms_to_sub_result": round(statistics.median(result), 3),
        "median_construct_ms": round(statistics.median(construct), 3),
        "median_ms_to_sub_sent_excl_first": round(statistics.median(sent[1:]), 3)
        if len(sent) > 1
        else None,
        "all_ms_to_sub_sent": [round(x, 3) for x in sent],
    }


def quantile(xs: list, q: float):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@defer.inlineCallbacks
def idle(cfg):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < cfg.conns + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    counted = [0]
    sink = None
    if OBSERVER_ONLY:

        def observer(notification):
            counted[0] += 1

    else:
        sink = JSONLinesSink(sinkPath())
        observer = sink.deliver
    # One fleet holds every account; it gates the handshakes itself.
    fleet = yadiskpush.PushFleet(
        reactor, maxHandshakes=cfg.concurrency, **settingsFor(cfg)
    )
    fleet.addNotificationObserver(observer)
    fleet.startService()
    gc.collect()
    rss0 = common.rss_kib()
    logins = [f"{cfg.login}{i}" for i in range(cfg.conns)]
    token = Secret(cfg.token)
    readyAt: list = []
    failures: list = []

    def ready(_jid):
        readyAt.append(time.perf_counter())

    def failed(failure):
        failure.trap(ServiceStopped, yadiskpush.YaDiskPushError)  # in fleet.gaveUp

    t0, c0 = time.perf_counter(), common.cpu_s()
    for login in logins:
        fleet.add(login, token)
        fleet[login].whenReady().addCallbacks(ready, failed)
    settled = fleet.whenAllSettled()
    settled.addTimeout(max(600.0, cfg.conns * 0.1), reactor)
    try:
        yield settled
    except defer.TimeoutError:
        failures.append("whenAllSettled() timed out")
    t1, c1 = time.perf_counter(), common.cpu_s()
    # The fleet counts an account before that account's own whenReady() waiters
    # run: let the last of them run before reading their times.
    yield sleep(0)
    n = fleet.subscribed
    failures += [repr(e) for e in fleet.gaveUp.values()]
    gc.collect()
    rss1 = common.rss_kib()
    common.out({"marker": "HOLD_START"})
    h0, hc0 = time.perf_counter(), common.cpu_s()
    yield sleep(cfg.hold)
    h1, hc1 = time.perf_counter(), common.cpu_s()
    common.out({"marker": "HOLD_END"})
    alive = sum(1 for login in logins if fleet[login].ready)
    summary = fleet.summary()
    rss2 = common.rss_kib()
    closing = defer.maybeDeferred(fleet.stopService)  # every stream closed cleanly
    closing.addTimeout(60, reactor)
    try:
        yield closing
    except defer.TimeoutError:
        pass
    if sink is not None:
        yield sink.close()
        if not keepSinks():
            os.unlink(sink.path)
    readySecs = [t - t0 for t in readyAt]
    return {
        "conns_requested": cfg.conns,
        "conns_up": n,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "alive_after_hold": alive,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "rss_start_kib": rss0,
        "rss_up_kib": rss1,
        "rss_after_hold_kib": rss2,
        "kib_per_conn": round((rss1 - rss0) / max(n, 1), 2),
        "establish_s": round(t1 - t0, 3),
        "establish_cpu_s": round(c1 - c0, 3),
        "ready_s_first": round(min(readySecs), 3) if readySecs else None,
        "ready_s_median": round(statistics.median(readySecs), 3) if readySecs else None,
        "ready_s_p95": round(quantile(readySecs, 0.95), 3) if readySecs else None,
        "hold_s": round(h1 - h0, 3),
        "hold_cpu_s": round(hc1 - hc0, 4),
        "hold_cpu_pct": round(100 * (hc1 - hc0) / (h1 - h0), 3),
        "notifications_counted": counted[0],
        "fleet_summary": summary,
    }


@defer.inlineCallbacks
def main(_reactor, cfg, systemBundle):
    mode = {"flood": flood, "handshake": handshake, "idle": idle}[cfg.mode]
    res = yield mode(cfg)
    if systemBundle is not None and not keepSinks():
        os.unlink(os.environ["SSL_CERT_FILE"])
    lib = versions()
    name = "yadiskpush-observer" if OBSERVER_ONLY else "yadiskpush"
    if systemBundle is not None:
        name = "yadiskpush-systrust"
    res.update(
        {
            "client": name,
            "version": "yadiskpush {yadiskpush} (Twisted {twisted}, wokkel {wokkel}, "
            "pyOpenSSL {pyopenssl}, {openssl})".format(**lib),
            "versions": lib,
            "yadiskpush_file": yadiskpush.__file__,
            "sink": None if OBSERVER_ONLY else "JSONLinesSink",
            "system_bundle": systemBundle,
            "mode": cfg.mode,
            "zlib": cfg.zlib,
            "tune": cfg.tune,
            "python": sys.version.split()[0],
        }
    )
    common.out(res)


def systemTrustBundle(caFile: str) -> str | None:
    """A copy of the system bundle with the stand-in's CA added, for SSL_CERT_FILE.

    Returns the system bundle used, or None when there is none (then only the CA)."""
    paths = ssl.get_default_verify_paths()
    system = next(
        (p for p in (paths.cafile, paths.openssl_cafile) if p and os.path.isfile(p)),
        None,
    )
    bundle = os.path.join(SINK_DIR, f"system-bundle-{os.getpid()}.pem")
    with open(bundle, "w") as out:
        if system is not None:
            with open(system) as f:
                out.write(f.read() + "\n")
        with open(caFile) as f:
            out.write(f.read())
    os.environ["SSL_CERT_FILE"] = bundle
    return system or ""


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--observer" in argv:
        argv.remove("--observer")
        OBSERVER_ONLY = True
    systemTrust = "--system-trust" in argv
    if systemTrust:
        argv.remove("--system-trust")
    cfg = common.parse_args(argv)
    if cfg.tune:
        raise SystemExit("yadiskpush: no tuned variant (the fleet shares by itself)")
    if cfg.zlib:
        raise SystemExit("yadiskpush_client.py: --zlib is not part of this comparison")
    if cfg.cpu is not None:
        try:
            os.sched_setaffinity(0, {cfg.cpu})
        except OSError:
            pass
    os.makedirs(SINK_DIR, exist_ok=True)
    systemBundle = None
    if systemTrust:
        # What users run with: no caFile, so the system trust store is loaded.
        systemBundle = systemTrustBundle(cfg.ca)
        cfg.ca = None
    level = LogLevel.debug if os.environ.get("YDP_DEBUGLOG") else LogLevel.warn
    # The library's own level filter, as twistd --log-level sets it: events
    # below it are not even built (hasattr: older releases had none).
    if hasattr(yadiskpush, "setLogLevel"):
        yadiskpush.setLogLevel(level)
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(level)]
            )
        ],
        redirectStandardIO=False,
    )
    task.react(main, (cfg, systemBundle))
