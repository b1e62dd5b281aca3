#!/usr/bin/env python3
"""Driver: runs flood_server.py and the peer clients, interleaved (A B C A B C ...),
and writes every raw result plus medians to $BENCH_RESULTS/<experiment>.json.

  python3 bench.py tlscheck
  python3 bench.py throughput [--n 20000] [--reps 5] [--clients raw,slixmpp,twisted]
  python3 bench.py handshake  [--count 50] [--reps 3]
  python3 bench.py idle  [--conns 1000] [--hold 60] [--ping-interval 30] [--reps 3]
  ... [--merge LABEL]   keep the earlier rows of <experiment>.json, add these

Server pinned to CPU 1, clients to CPU 0 (2-core machine).  Loopback only.

Where things are (environment variables; ``make bench`` sets them all):
  BENCH_DIR      the project's .bench/ directory: the default for all below
  BENCH_RESULTS  results (default $BENCH_DIR/results)
  BENCH_TMP      work files: the server's throwaway CA, sinks (default $BENCH_DIR/tmp)
  SLIX_PY, TW_PY, YDP_PY  the Python of each peer's virtualenv
                 (default $BENCH_DIR/venv-slixmpp, venv-twisted, venv-yadiskpush)
  RAW_PY         the Python of the server and the raw client (default: this one)
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH_DIR = os.environ.get(
    "BENCH_DIR", os.path.join(HERE, os.pardir, os.pardir, ".bench")
)
RESULTS = os.environ.get("BENCH_RESULTS", os.path.join(BENCH_DIR, "results"))
WORK = os.environ.get("BENCH_TMP", os.path.join(BENCH_DIR, "tmp"))


def venvPython(name: str) -> str:
    return os.path.join(BENCH_DIR, name, "bin", "python")


SYS_PY = os.environ.get("RAW_PY", sys.executable)
SLIX_PY = os.environ.get("SLIX_PY", venvPython("venv-slixmpp"))
TW_PY = os.environ.get("TW_PY", venvPython("venv-twisted"))
YDP_PY = os.environ.get("YDP_PY", venvPython("venv-yadiskpush"))


def script(name: str) -> str:
    return os.path.join(HERE, name)


CLIENTS = {
    "raw": [SYS_PY, script("raw_client.py")],
    "raw+zlib": [SYS_PY, script("raw_client.py"), "--zlib"],
    "raw-16k": [SYS_PY, script("raw_client.py"), "--tune"],
    "slixmpp": [SLIX_PY, script("slix_client.py")],
    "slixmpp-sharedctx": [SLIX_PY, script("slix_client.py"), "--tune"],
    "twisted": [TW_PY, script("twisted_client.py")],
    "twisted-tuned": [TW_PY, script("twisted_client.py"), "--tune"],
    "twisted-tuned-norelbuf": [
        TW_PY,
        script("twisted_client.py"),
        "--tune",
        "--no-release-buffers",
    ],
    # yadiskpush (the project) through its public API: PushService + JSONLinesSink
    # (flood, handshake) or one PushFleet of all the accounts (idle); or an observer
    # that only counts (library cost without the sink's)
    "yadiskpush": [YDP_PY, script("yadiskpush_client.py")],
    "yadiskpush-observer": [YDP_PY, script("yadiskpush_client.py"), "--observer"],
    # ... and with the system trust store, as users run it (no caFile)
    "yadiskpush-systrust": [YDP_PY, script("yadiskpush_client.py"), "--system-trust"],
}
SERVER_CPU, CLIENT_CPU = "1", "0"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Server:
    count = 0

    def __init__(self, mode: str, **opts) -> None:
        Server.count += 1
        self.workdir = os.path.join(WORK, f"srv-{mode}-{os.getpid()}-{Server.count}")
        cmd = [
            SYS_PY,
            os.path.join(HERE, "flood_server.py"),
            "--mode",
            mode,
            "--workdir",
            self.workdir,
            "--cpu",
            SERVER_CPU,
        ]
        for k, v in opts.items():
            cmd += ["--" + k.replace("_", "-"), str(v)]
        self.p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.get("ready", 30)
        self.port, self.ca = ready["port"], ready["ca"]

    def _read(self) -> None:
        for line in self.p.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                sys.stderr.write("server: " + line)

    def get(self, event: str, timeout: float) -> dict:
        end = time.time() + timeout
        while True:
            left = end - time.time()
            if left <= 0:
                raise TimeoutError(f"server event {event!r} not seen")
            ev = self.q.get(timeout=left)
            if ev.get("event") == event:
                return ev
            if ev.get("event") == "error":
                sys.stderr.write(f"server error: {ev}\n")

    def drain(self, event: str) -> list:
        out = []
        while True:
            try:
                ev = self.q.get_nowait()
            except queue.Empty:
                return out
            if ev.get("event") == event:
                out.append(ev)
            elif ev.get("event") == "error":
                sys.stderr.write(f"server error: {ev}\n")

    def cmd(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def stats(self) -> dict:
        self.cmd("stats")
        return self.get("stats", 30)

    def stop(self) -> None:
        try:
            self.cmd("quit")
            self.p.wait(10)
        except Exception:  # noqa: BLE001
            self.p.terminate()  # our own child, by PID
            self.p.wait(10)


def client_cmd(name: str, srv: Server, *extra: str) -> list:
    return CLIENTS[name] + [
        "--port",
        str(srv.port),
        "--ca",
        srv.ca,
        "--cpu",
        CLIENT_CPU,
        *extra,
    ]


def run_client(name: str, srv: Server, *extra: str, timeout: float = 600) -> dict:
    p = subprocess.run(
        client_cmd(name, srv, *extra), capture_output=True, text=True, timeout=timeout
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed rc={p.returncode}\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


MERGE_LABEL = None  # set by --merge LABEL


def merge(old: dict, new: dict, label: str) -> dict:
    """Add a new batch of runs to an existing results file, keeping every earlier row.

    Clients not in the file keep their names; a client that is already there (a
    reference re-run in the new batch, e.g. slixmpp) is stored as "NAME [LABEL]".
    Summaries were computed within the new batch, so its paired ratios are against
    that batch's own slixmpp runs.  old["batches"] records which rows belong to which
    batch."""
    if "runs" not in old:  # tlscheck: {client: verdict}
        for name, v in new.items():
            old[name if name not in old else f"{name} [{label}]"] = v
        return old
    batches = old.setdefault(
        "batches",
        [{"label": "", "args": old.get("args"), "clients": list(old["runs"])}],
    )
    keys = []
    for name in new["runs"]:
        key = name if name not in old["runs"] else f"{name} [{label}]"
        old["runs"][key] = new["runs"][name]
        old["summary"][key] = new["summary"][name]
        keys.append(key)
    batches.append(
        {
            "label": label,
            "args": new["args"],
            "clients": keys,
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
        }
    )
    return old


def save(name: str, data: dict) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name + ".json")
    if MERGE_LABEL and os.path.exists(path):
        with open(path) as f:
            data = merge(json.load(f), data, MERGE_LABEL)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    print(f"wrote {path}")


# -------------------------------------------------------------------------------
def tlscheck(args) -> None:
    """Each client must refuse a server whose certificate is not from the CA it trusts,
    and must succeed with the right CA (so certificate verification is really on)."""
    srv = Server("handshake")
    other = Server("handshake")  # its CA is the wrong one for srv
    res = {}
    for name in args.clients:
        ok = run_client(name, srv, "--mode", "handshake", "--count", "1")
        cmd = CLIENTS[name] + [
            "--port",
            str(srv.port),
            "--ca",
            other.ca,
            "--mode",
            "handshake",
            "--count",
            "1",
        ]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            refused = p.returncode != 0
            tail = p.stderr.strip().splitlines()[-1:] if p.stderr else []
        except subprocess.TimeoutExpired:
            refused, tail = True, ["timed out (never authenticated)"]
        res[name] = {
            "right_ca_ok": ok["count"] == 1,
            "wrong_ca_refused": refused,
            "wrong_ca_msg": tail,
        }
        print(name, res[name])
    srv.stop()
    other.stop()
    save(args.tag or "tlscheck", res)


def throughput(args) -> None:
    srv = Server("flood", n=args.n, window=args.window)
    runs: dict = {c: [] for c in args.clients}
    for rep in range(args.reps):
        order = args.clients if rep % 2 == 0 else list(reversed(args.clients))
        for name in order:
            if args.n_for and name in args.n_for:
                srv.cmd(f"set n {args.n_for[name]}")
                srv.get("set", 10)
            cl = run_client(name, srv, "--mode", "flood")
            ev = srv.get("flood", 60)
            if args.n_for and name in args.n_for:
                srv.cmd(f"set n {args.n}")
                srv.get("set", 10)
            r = {
                "rate": ev["rate"],
                "secs": ev["secs"],
                "n": ev["n"],
                "compressed": ev["compressed"],
                "server_cpu_pct": ev["server_cpu_pct"],
                "client_cpu_s": cl["client_cpu_s"],
                "client_us_per_push": round(1e6 * cl["client_cpu_s"] / ev["n"], 2),
                "client_cpu_pct": round(
                    100 * cl["client_cpu_s"] / cl["client_wall_s"], 1
                ),
                "wire_bytes_per_ack": ev["client_wire_bytes_per_ack"],
                "pushes_acked": cl["pushes"],
                "version": cl["version"],
            }
            # clients that check their own output (yadiskpush: the sink file read back)
            r.update(
                {
                    k: cl[k]
                    for k in ("sink_lines", "sink_check", "sink_bytes_per_line")
                    if k in cl
                }
            )
            runs[name].append(r)
            print(
                f"rep {rep} {name:<19} {r['rate']:9.1f}/s  "
                f"{r['client_us_per_push']:6.2f} us CPU/push  "
                f"client {r['client_cpu_pct']:5.1f}% CPU  "
                f"server {r['server_cpu_pct']:5.1f}% CPU",
                flush=True,
            )
    srv.stop()
    summary = {}
    base = "slixmpp" if "slixmpp" in runs else None
    for name, rs in runs.items():
        summary[name] = {
            k: med([r[k] for r in rs])
            for k in (
                "rate",
                "client_us_per_push",
                "client_cpu_pct",
                "server_cpu_pct",
                "wire_bytes_per_ack",
                "secs",
                "n",
            )
        }
        summary[name]["rate_min"] = min(r["rate"] for r in rs)
        summary[name]["rate_max"] = max(r["rate"] for r in rs)
    if base:
        # paired ratios: run i of X against run i of slixmpp (same rep, adjacent)
        for name, rs in runs.items():
            summary[name]["rate_vs_slixmpp_paired_median"] = round(
                med(
                    [
                        a["rate"] / b["rate"]
                        for a, b in zip(rs, runs[base], strict=False)
                    ]
                ),
                3,
            )
            summary[name]["cpu_per_push_vs_slixmpp_paired_median"] = round(
                med(
                    [
                        a["client_us_per_push"] / b["client_us_per_push"]
                        for a, b in zip(rs, runs[base], strict=False)
                    ]
                ),
                3,
            )
    print(json.dumps(summary, indent=1))
    save(
        args.tag or f"throughput_n{args.n}",
        {"args": vars(args), "runs": runs, "summary": summary},
    )


def handshake(args) -> None:
    srv = Server("handshake")
    runs: dict = {c: [] for c in args.clients}
    for rep in range(args.reps):
        order = args.clients if rep % 2 == 0 else list(reversed(args.clients))
        for name in order:
            srv.drain("handshake")
            cl = run_client(
                name, srv, "--mode", "handshake", "--count", str(args.count)
            )
            time.sleep(0.3)
            evs = srv.drain("handshake")
            r = {
                "client_median_ms_to_sub_sent": cl["median_ms_to_sub_sent"],
                "client_median_ms_to_sub_result": cl["median_ms_to_sub_result"],
                "client_first_ms": cl["first_ms_to_sub_sent"],
                "client_median_construct_ms": cl["median_construct_ms"],
                "server_median_ms_accept_to_sub": med([e["ms"] for e in evs]),
                "server_events": len(evs),
                "version": cl["version"],
            }
            runs[name].append(r)
            print(
                f"rep {rep} {name:<19} client connect->sub sent "
                f"{r['client_median_ms_to_sub_sent']:7.2f} ms "
                f"(first {r['client_first_ms']:7.2f})  server accept->sub "
                f"{r['server_median_ms_accept_to_sub']:7.2f} ms  n={len(evs)}",
                flush=True,
            )
    srv.stop()
    summary = {
        name: {
            k: med([r[k] for r in rs])
            for k in (
                "client_median_ms_to_sub_sent",
                "client_median_ms_to_sub_result",
                "client_first_ms",
                "server_median_ms_accept_to_sub",
                "client_median_construct_ms",
            )
        }
        for name, rs in runs.items()
    }
    if "slixmpp" in runs:
        for name, rs in runs.items():
            summary[name]["vs_slixmpp_paired_median"] = round(
                med(
                    [
                        a["client_median_ms_to_sub_sent"]
                        / b["client_median_ms_to_sub_sent"]
                        for a, b in zip(rs, runs["slixmpp"], strict=False)
                    ]
                ),
                3,
            )
    print(json.dumps(summary, indent=1))
    save(
        args.tag or "handshake", {"args": vars(args), "runs": runs, "summary": summary}
    )


def idle_once(name: str, args) -> dict:
    srv = Server("idle", ping_interval=args.ping_interval)
    cmd = client_cmd(
        name,
        srv,
        "--mode",
        "idle",
        "--conns",
        str(args.conns),
        "--concurrency",
        str(args.concurrency),
        "--hold",
        str(args.hold),
    )
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list = []
    threading.Thread(target=lambda: err.extend(p.stderr), daemon=True).start()
    st0 = st1 = None
    result = None
    for line in p.stdout:
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if d.get("marker") == "HOLD_START":
            st0 = srv.stats()
        elif d.get("marker") == "HOLD_END":
            st1 = srv.stats()
        else:
            result = d
    p.wait()
    srv.stop()
    if result is None:
        raise RuntimeError(
            "{} idle failed rc={}\n{}".format(name, p.returncode, "".join(err)[-3000:])
        )
    pongs = st1["pongs"] - st0["pongs"]
    result.update(
        {
            "pings_sent_in_hold": st1["pings_sent"] - st0["pings_sent"],
            "pongs_in_hold": pongs,
            "client_pings_in_hold": st1["client_pings"] - st0["client_pings"],
            "client_other_iqs_total": st1["client_iqs"],
            "cpu_us_per_pong": round(1e6 * result["hold_cpu_s"] / pongs, 1)
            if pongs
            else None,
            "server_open_at_hold_end": st1["open"],
            "server_lost_before_sub": st1["lost_before_sub"],
            "server_handshake_ms_median": st1["handshake_ms_median"],
        }
    )
    return result


def idle(args) -> None:
    runs: dict = {c: [] for c in args.clients}
    for rep in range(args.reps):
        order = args.clients if rep % 2 == 0 else list(reversed(args.clients))
        for name in order:
            r = idle_once(name, args)
            runs[name].append(r)
            print(
                f"rep {rep} {name:<19} up {r['conns_up']}/{args.conns} in "
                f"{r['establish_s']:.2f}s  {r['kib_per_conn']:.1f} KiB/conn  "
                f"hold CPU {r['hold_cpu_pct']:.3f}%  {r['cpu_us_per_pong']} us/pong  "
                f"pongs {r['pongs_in_hold']}",
                flush=True,
            )
    summary = {
        name: {
            k: med([r[k] for r in rs])
            for k in (
                "kib_per_conn",
                "establish_s",
                "establish_cpu_s",
                "hold_cpu_pct",
                "cpu_us_per_pong",
                "conns_up",
                "rss_start_kib",
                "rss_up_kib",
                "pongs_in_hold",
                "client_pings_in_hold",
            )
        }
        for name, rs in runs.items()
    }
    if "slixmpp" in runs:
        for name, rs in runs.items():
            summary[name]["kib_per_conn_vs_slixmpp_paired_median"] = round(
                med(
                    [
                        a["kib_per_conn"] / b["kib_per_conn"]
                        for a, b in zip(rs, runs["slixmpp"], strict=False)
                    ]
                ),
                3,
            )
    print(json.dumps(summary, indent=1))
    save(
        args.tag or f"idle_{args.conns}",
        {"args": vars(args), "runs": runs, "summary": summary},
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "experiment", choices=["tlscheck", "throughput", "handshake", "idle"]
    )
    ap.add_argument("--clients", default="raw,slixmpp,twisted")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument(
        "--n-for", default="", help="per-client N, e.g. raw=600000,slixmpp=60000"
    )
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--hold", type=float, default=60)
    ap.add_argument("--ping-interval", type=float, default=30)
    ap.add_argument("--tag", default="")
    ap.add_argument(
        "--merge",
        default="",
        metavar="LABEL",
        help="add these runs to <tag>.json instead of replacing it; clients "
        "already in the file are stored as 'NAME [LABEL]'",
    )
    args = ap.parse_args()
    global MERGE_LABEL
    MERGE_LABEL = args.merge or None
    args.clients = args.clients.split(",")
    args.n_for = {
        k: int(v) for k, v in (kv.split("=") for kv in args.n_for.split(",") if kv)
    }
    os.makedirs(WORK, exist_ok=True)
    os.environ["BENCH_TMP"] = WORK  # the clients' work files (yadiskpush's sinks)
    {
        "tlscheck": tlscheck,
        "throughput": throughput,
        "handshake": handshake,
        "idle": idle,
    }[args.experiment](args)


if __name__ == "__main__":
    main()
