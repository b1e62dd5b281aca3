"""
``make bench``: yadiskpush among its peers, measured against the targets of
issue 10, printed as one table.

Runs the peers' harness (``benchmarks/peers/``, or another copy with
``--peers``) in three experiments, each with its clients interleaved in one
run on the same stand-in server: throughput (a flood of pushes, every one
written by a JSON-lines sink), handshake (connect to subscription sent), and
idle connections held while the server pings each every 30 s. Then it prints
each figure of the issue's table next to the peers' and the target, with the
machine and the versions it ran on.

Absolute figures on a shared machine are noise: the throughput and handshake
figures are *paired ratios* (each yadiskpush run divided by the slixmpp run
next to it, the median over pairs). The idle figures are absolute, so the
peers' values measured in the same run are printed beside them.

Nothing here asserts timing: the exit status says only whether every client
ran. Sizes: ``--size full`` (about 15 minutes on 2 cores), ``small`` (a few
minutes, no 10,000-connection run), ``smoke`` (seconds; run by CI so that the
harness cannot rot).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

THROUGHPUT_CLIENTS = ["slixmpp", "twisted", "yadiskpush", "yadiskpush-observer"]
HANDSHAKE_CLIENTS = ["slixmpp", "twisted", "twisted-tuned", "yadiskpush"]
IDLE_CLIENTS = ["twisted-tuned", "yadiskpush-systrust"]

#: The distributions whose versions the report names, per virtualenv.
VENV_DISTRIBUTIONS = {
    "slixmpp": ["slixmpp", "aiodns", "pyasn1"],
    "twisted": ["Twisted", "wokkel", "pyOpenSSL", "cryptography", "service-identity"],
    "yadiskpush": [
        "yadiskpush",
        "Twisted",
        "wokkel",
        "pyOpenSSL",
        "cryptography",
        "service-identity",
    ],
}


@dataclass(frozen=True)
class Size:
    """How much of each experiment one configuration runs."""

    pushes: int
    throughputReps: int
    handshakes: int
    handshakeReps: int
    #: (connections, repetitions) of each idle run
    idle: tuple[tuple[int, int], ...]
    hold: float
    pingInterval: float


SIZES = {
    "full": Size(20000, 5, 50, 5, ((1000, 2), (10000, 1)), 60.0, 30.0),
    "small": Size(5000, 3, 20, 3, ((1000, 1),), 35.0, 30.0),
    "smoke": Size(300, 1, 3, 1, ((20, 1),), 3.0, 1.0),
}


# -- the machine ------------------------------------------------------------


def cpuModel() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memoryGiB() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def loadAverage() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def projectRevision() -> str:
    """The commit the installed yadiskpush was built from, and whether it was dirty."""
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return head + (" with uncommitted changes" if dirty else "")


def venvVersions(python: str, names: list[str]) -> str:
    """Python and distribution versions inside one virtualenv, as one line."""
    probe = (
        "import json, sys, importlib.metadata as m\n"
        "out = {'Python': sys.version.split()[0]}\n"
        "for n in sys.argv[1:]:\n"
        "    try:\n"
        "        out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )
    try:
        out = subprocess.run(
            [python, "-c", probe, *names], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return f"unavailable ({e})"
    return ", ".join(f"{k} {v}" for k, v in json.loads(out).items())


def raiseDescriptorLimit(connections: int) -> tuple[bool, str]:
    """
    Raise this process's open-file limit, which the client and the server
    inherit, so that ``connections`` idle connections fit: each of the two
    holds one descriptor per connection (more than 20,000 between them for
    10,000 connections), plus a few of its own.

    :returns: whether the limit is enough, and a sentence saying what was done.
    """
    wanted = connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return True, (
            f"open-file limit {soft} per process, enough for {connections:,} "
            "connections"
        )
    unlimited = hard == resource.RLIM_INFINITY
    if unlimited or hard >= wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return True, f"open-file limit raised from {soft} to {wanted} per process"
    try:
        # Above the hard limit only with privileges (CAP_SYS_RESOURCE).
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        return True, (
            f"open-file limit raised from {soft} to {wanted} per process (hard "
            f"limit too, from {hard})"
        )
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return False, (
        f"CANNOT raise the open-file limit to {wanted} for {connections:,} "
        f"connections: the hard limit is {hard}, and raising it needs privileges "
        "(ulimit -Hn)"
    )


# -- running the harness ----------------------------------------------------


@dataclass
class Runner:
    """Runs the harness's bench.py with this project's settings."""

    peers: str
    benchDir: str
    results: str
    log: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        venv = os.path.join(self.benchDir, "venv-{}", "bin", "python").format
        env.update(
            BENCH_DIR=self.benchDir,
            BENCH_RESULTS=self.results,
            BENCH_TMP=os.path.join(self.benchDir, "tmp"),
            RAW_PY=sys.executable,
            SLIX_PY=venv("slixmpp"),
            TW_PY=venv("twisted"),
            YDP_PY=venv("yadiskpush"),
        )
        env["YDP_SINK_DIR"] = os.path.join(env["BENCH_TMP"], "ydp-sinks")
        return env

    def run(self, tag: str, experiment: str, *options: str) -> dict[str, Any] | None:
        """One bench.py invocation; its results file, or None if it failed."""
        path = os.path.join(self.results, tag + ".json")
        if os.path.exists(path):
            os.unlink(path)  # never report an earlier run's figures
        argv = [sys.executable, os.path.join(self.peers, "bench.py"), experiment]
        argv += [*options, "--tag", tag]
        started = time.time()
        print(f"\n== {experiment} {' '.join(options)}  (load {loadAverage()})")
        sys.stdout.flush()
        with open(os.path.join(self.results, tag + ".log"), "w") as log:
            process = subprocess.Popen(
                argv,
                env=self.environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert process.stdout is not None
            inSummary = False
            for line in process.stdout:
                log.write(line)
                # bench.py's own summary (indented JSON) is in the results file.
                if line.startswith("{"):
                    inSummary = True
                if not inSummary:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                if line.startswith("}"):
                    inSummary = False
            status = process.wait()
        elapsed = time.time() - started
        self.log.append(
            f"{tag}: {elapsed:.0f} s, load after {loadAverage()}"
            + ("" if status == 0 else f", FAILED with status {status}")
        )
        if status != 0 or not os.path.exists(path):
            self.failed.append(tag)
            print(f"!! {experiment} failed (status {status}); see {log.name}")
            return None
        with open(path) as f:
            return json.load(f)


# -- the table --------------------------------------------------------------


def pairedRatio(data: dict[str, Any] | None, name: str, ref: str, key: str) -> Any:
    """Median over pairs of run i of ``name`` divided by run i of ``ref``."""
    if not data or name not in data["runs"] or ref not in data["runs"]:
        return None
    pairs = zip(data["runs"][name], data["runs"][ref], strict=False)
    ratios = [a[key] / b[key] for a, b in pairs if a.get(key) and b.get(key)]
    return statistics.median(ratios) if ratios else None


def summaryValue(data: dict[str, Any] | None, name: str, key: str) -> Any:
    if not data or name not in data.get("summary", {}):
        return None
    return data["summary"][name].get(key)


#: A cell for a client that is not part of that experiment.
NA = "–"


@dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[float], bool]


def atLeast(x: float) -> Target:
    return Target(f"≥ {x:g}", lambda v: v >= x)


def atMost(x: float, unit: str = "") -> Target:
    return Target(f"≤ {x:g}{unit}", lambda v: v <= x)


@dataclass
class Row:
    figure: str
    yadiskpush: Any
    twisted: Any
    slixmpp: Any
    target: Target | None
    digits: int = 2
    note: str = ""

    def cells(self) -> list[str]:
        def fmt(v: Any) -> str:
            if v is None:
                return "not run"
            if isinstance(v, str):
                return v
            return f"{v:,.{self.digits}f}"

        if self.target is None:
            verdict = ""
        elif not isinstance(self.yadiskpush, int | float):
            verdict = "not measured"
        else:
            verdict = "met" if self.target.met(self.yadiskpush) else "MISSED"
        return [
            self.figure,
            fmt(self.yadiskpush),
            fmt(self.twisted),
            fmt(self.slixmpp),
            self.target.text if self.target else NA,
            verdict + (f" {self.note}" if self.note else ""),
        ]


def rows(
    throughput: dict[str, Any] | None,
    handshake: dict[str, Any] | None,
    idle: dict[int, dict[str, Any] | None],
    size: Size,
    only: set[str],
) -> list[Row]:
    """The table's rows for the experiments asked for."""
    throughputRows = [
        Row(
            "pushes/s × slixmpp (JSON-lines sink)",
            summaryValue(throughput, "yadiskpush", "rate_vs_slixmpp_paired_median"),
            summaryValue(throughput, "twisted", "rate_vs_slixmpp_paired_median"),
            summaryValue(throughput, "slixmpp", "rate_vs_slixmpp_paired_median"),
            atLeast(4.0),
        ),
        Row(
            "pushes/s × the Twisted client",
            pairedRatio(throughput, "yadiskpush", "twisted", "rate"),
            pairedRatio(throughput, "twisted", "twisted", "rate"),
            pairedRatio(throughput, "slixmpp", "twisted", "rate"),
            atLeast(1.2),
        ),
        Row(
            "client CPU µs per push × slixmpp",
            summaryValue(
                throughput, "yadiskpush", "cpu_per_push_vs_slixmpp_paired_median"
            ),
            summaryValue(
                throughput, "twisted", "cpu_per_push_vs_slixmpp_paired_median"
            ),
            summaryValue(
                throughput, "slixmpp", "cpu_per_push_vs_slixmpp_paired_median"
            ),
            atMost(0.22),
        ),
        Row(
            "  pushes/s × slixmpp, counting observer (no sink)",
            summaryValue(
                throughput, "yadiskpush-observer", "rate_vs_slixmpp_paired_median"
            ),
            NA,
            NA,
            None,
        ),
        Row(
            "  CPU µs per push × slixmpp, counting observer",
            summaryValue(
                throughput,
                "yadiskpush-observer",
                "cpu_per_push_vs_slixmpp_paired_median",
            ),
            NA,
            NA,
            None,
        ),
    ]
    handshakeRows = [
        Row(
            "connect → subscription sent × slixmpp",
            summaryValue(handshake, "yadiskpush", "vs_slixmpp_paired_median"),
            summaryValue(handshake, "twisted", "vs_slixmpp_paired_median"),
            summaryValue(handshake, "slixmpp", "vs_slixmpp_paired_median"),
            atMost(0.7),
        ),
        Row(
            "  same, the Twisted client with one shared TLS context",
            NA,
            summaryValue(handshake, "twisted-tuned", "vs_slixmpp_paired_median"),
            NA,
            None,
        ),
    ]
    out = throughputRows if "throughput" in only else []
    out += handshakeRows if "handshake" in only else []
    ydp, tw = "yadiskpush-systrust", "twisted-tuned"
    for conns, data in idle.items():
        up = summaryValue(data, ydp, "conns_up")
        short = (
            f"(only {up:,.0f}/{conns:,} up)" if up is not None and up < conns else ""
        )
        tenThousand = conns == 10000
        out.append(
            Row(
                f"KiB per idle connection, {conns:,} connections",
                summaryValue(data, ydp, "kib_per_conn"),
                summaryValue(data, tw, "kib_per_conn"),
                NA,
                # Fixed costs dominate a few connections: the target is for many.
                atMost(64, " KiB") if conns >= 1000 else None,
                digits=1,
                note=short,
            )
        )
        out.append(
            Row(
                f"{conns:,} connections: time to establish all, s",
                summaryValue(data, ydp, "establish_s"),
                summaryValue(data, tw, "establish_s"),
                NA,
                atMost(60, " s") if tenThousand else None,
                digits=1,
                note=short,
            )
        )
        out.append(
            Row(
                "  CPU seconds to establish all (wall time above)",
                summaryValue(data, ydp, "establish_cpu_s"),
                summaryValue(data, tw, "establish_cpu_s"),
                NA,
                None,
                digits=1,
            )
        )
        pings = f"ping every {size.pingInterval:g} s"
        out.append(
            Row(
                f"{conns:,} connections: idle CPU %, {pings}",
                summaryValue(data, ydp, "hold_cpu_pct"),
                summaryValue(data, tw, "hold_cpu_pct"),
                NA,
                atMost(4, " %") if tenThousand and size.pingInterval == 30 else None,
                digits=2,
                note=short,
            )
        )
    return out


def table(header: list[str], body: list[list[str]]) -> str:
    """A reStructuredText simple table: readable here, pasteable into the docs."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return "\n".join([rule, line(header), rule, *map(line, body), rule])


# -- main -------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--peers",
        default=os.path.join(HERE, "peers"),
        help="the harness's folder (bench.py and the clients)",
    )
    parser.add_argument(
        "--bench-dir",
        default=os.path.join(ROOT, ".bench"),
        help="the peers' virtualenvs; results and work files go here too",
    )
    parser.add_argument(
        "--only",
        default="throughput,handshake,idle",
        help="comma-separated experiments to run (default: all three)",
    )
    args = parser.parse_args()
    size = SIZES[args.size]
    only = set(args.only.split(","))
    benchDir = os.path.abspath(args.bench_dir)
    peers = os.path.abspath(args.peers)
    results = os.path.join(benchDir, "results", args.size)
    os.makedirs(results, exist_ok=True)
    runner = Runner(peers, benchDir, results)

    startedAt = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # make bench installed this tree into the yadiskpush venv just before.
    revision = projectRevision()
    loadBefore = loadAverage()
    idleRuns = list(size.idle) if "idle" in only else []
    limits: list[str] = []
    runnable: list[tuple[int, int]] = []
    # The largest run first: once it fits, the smaller ones do.
    for conns, reps in sorted(idleRuns, reverse=True):
        enough, sentence = raiseDescriptorLimit(conns)
        if enough:
            runnable.insert(0, (conns, reps))
            if not limits or not runnable[1:]:
                limits.append(sentence)
        else:
            limits.append(sentence + f"; the {conns:,}-connection run is skipped")
    for sentence in limits:
        print(sentence)

    throughput = handshake = None
    if "throughput" in only:
        throughput = runner.run(
            "throughput",
            "throughput",
            "--n",
            str(size.pushes),
            "--reps",
            str(size.throughputReps),
            "--clients",
            ",".join(THROUGHPUT_CLIENTS),
        )
    if "handshake" in only:
        handshake = runner.run(
            "handshake",
            "handshake",
            "--count",
            str(size.handshakes),
            "--reps",
            str(size.handshakeReps),
            "--clients",
            ",".join(HANDSHAKE_CLIENTS),
        )
    idle: dict[int, dict[str, Any] | None] = {c: None for c, _ in idleRuns}
    for conns, reps in runnable:
        idle[conns] = runner.run(
            f"idle_{conns}",
            "idle",
            "--conns",
            str(conns),
            "--reps",
            str(reps),
            "--hold",
            f"{size.hold:g}",
            "--ping-interval",
            f"{size.pingInterval:g}",
            "--concurrency",
            "50",
            "--clients",
            ",".join(IDLE_CLIENTS),
        )

    header = ["figure", "yadiskpush", "Twisted client", "slixmpp", "target", "verdict"]
    body = [r.cells() for r in rows(throughput, handshake, idle, size, only)]
    venv = os.path.join(benchDir, "venv-{}", "bin", "python").format
    report = [
        "",
        f"yadiskpush against its peers: make bench, size {args.size!r}, {startedAt}",
        "",
        table(header, body),
        "",
        textwrap.fill(
            "Ratios are paired: each run divided by the reference client's run "
            "next to it (same server, interleaved), median over the pairs; "
            "compare those, not absolute figures. Idle rows: yadiskpush with the "
            "system trust store, all accounts in one PushFleet; the Twisted "
            "client with one shared TLS context; absolute values from the same "
            f"run. Throughput: {size.pushes:,} pushes × {size.throughputReps} "
            f"runs per client; handshake: {size.handshakes} connections × "
            f"{size.handshakeReps} processes per client; idle: "
            f"{size.hold:g} s hold, 50 handshakes in flight.",
            width=80,
        ),
        "",
        f"machine: {cpuModel()}, {os.cpu_count()} cores, {memoryGiB()}, "
        f"{platform.system()} {platform.release()}",
        f"load average (1, 5, 15 min): before {loadBefore}, after {loadAverage()}",
        *(f"{s}" for s in limits),
        f"driver and server: Python {platform.python_version()}",
        *(
            f"{name} venv: {venvVersions(venv(name), distributions)}"
            for name, distributions in VENV_DISTRIBUTIONS.items()
        ),
        f"yadiskpush installed from {revision}",
        f"harness: {peers}",
        "runs: " + "; ".join(runner.log),
    ]
    if runner.failed:
        report.append("FAILED: " + ", ".join(runner.failed))
    text = "\n".join(report)
    print(text)
    with open(os.path.join(results, "report.txt"), "w") as f:
        f.write(text + "\n")
    return 1 if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main())
