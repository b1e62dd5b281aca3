"""Shared driver for the benchmark clients: argument parsing and the three workloads.

Each client module provides ``open_session(cfg) -> Session`` (an awaitable that
connects, negotiates STARTTLS/[zlib]/X-YANDEX-OAUTH/bind/session, answers the
server's version request and pings, subscribes, waits for the subscription result,
and acknowledges every push), and calls ``run(open_session, name, version)``.

A Session exposes: t_create (perf_counter before the client object was built),
t_connect (perf_counter when connecting started), t_sub_sent,
t_sub_result, pushes (count acked), last_version, ``closed`` (an asyncio.Future done
when the connection is gone) and ``async close()``.

Output: ONE JSON line on stdout (plus "HOLD_START"/"HOLD_END" marker lines in idle
mode, so the driver can read the server's ping counters around the hold window).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import time


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["flood", "handshake", "idle"], required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--login", default="test")
    ap.add_argument("--token", default="c4181a7c2cf4521964a72ff57a34a07")
    ap.add_argument("--domain", default="ya.ru")
    ap.add_argument("--zlib", action="store_true", help="negotiate XEP-0138 zlib")
    ap.add_argument(
        "--count", type=int, default=50, help="handshake: sequential connections"
    )
    ap.add_argument("--conns", type=int, default=1000, help="idle: connections held")
    ap.add_argument(
        "--concurrency", type=int, default=50, help="idle: handshakes in flight"
    )
    ap.add_argument("--hold", type=float, default=60.0, help="idle: seconds to hold")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    ap.add_argument(
        "--tune",
        action="store_true",
        help="client-specific tuned variant (see each client's docstring)",
    )
    return ap.parse_args(argv)


def out(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def flood(open_session, cfg) -> dict:
    s = await open_session(cfg)
    c0, w0 = cpu_s(), time.perf_counter()
    await s.closed
    c1, w1 = cpu_s(), time.perf_counter()
    return {
        "pushes": s.pushes,
        "last_version": s.last_version,
        "client_cpu_s": round(c1 - c0, 4),
        "client_wall_s": round(w1 - w0, 4),
        "handshake_ms": round((s.t_sub_sent - s.t_connect) * 1000, 3),
    }


async def handshake(open_session, cfg) -> dict:
    sent, result, construct = [], [], []
    for _ in range(cfg.count):
        s = await open_session(cfg)
        construct.append((s.t_connect - s.t_create) * 1000)
        sent.append((s.t_sub_sent - s.t_connect) * 1000)
        result.append((s.t_sub_result - s.t_connect) * 1000)
        await s.close()
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


async def idle(open_session, cfg) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < cfg.conns + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.collect()
    rss0 = rss_kib()
    sem = asyncio.Semaphore(cfg.concurrency)
    sessions = []
    failures = []

    async def one():
        async with sem:
            try:
                sessions.append(await open_session(cfg))
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))

    t0 = time.perf_counter()
    c0 = cpu_s()
    await asyncio.gather(*(one() for _ in range(cfg.conns)))
    t1 = time.perf_counter()
    c1 = cpu_s()
    gc.collect()
    rss1 = rss_kib()
    n = len(sessions)
    out({"marker": "HOLD_START"})
    h0, hc0 = time.perf_counter(), cpu_s()
    await asyncio.sleep(cfg.hold)
    h1, hc1 = time.perf_counter(), cpu_s()
    out({"marker": "HOLD_END"})
    alive = sum(1 for s in sessions if not s.closed.done())
    rss2 = rss_kib()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(s.close() for s in sessions), return_exceptions=True), 60
        )
    except TimeoutError:
        pass
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
        "hold_s": round(h1 - h0, 3),
        "hold_cpu_s": round(hc1 - hc0, 4),
        "hold_cpu_pct": round(100 * (hc1 - hc0) / (h1 - h0), 3),
    }


def run(open_session, name: str, version: str, argv=None) -> None:
    cfg = parse_args(argv)
    if cfg.cpu is not None:
        try:
            os.sched_setaffinity(0, {cfg.cpu})
        except OSError:
            pass
    fn = {"flood": flood, "handshake": handshake, "idle": idle}[cfg.mode]
    res = asyncio.run(fn(open_session, cfg))
    res.update(
        {
            "client": name,
            "version": version,
            "mode": cfg.mode,
            "zlib": cfg.zlib,
            "tune": cfg.tune,
            "python": sys.version.split()[0],
        }
    )
    out(res)
