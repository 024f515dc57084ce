"""Benchmark: what each tracing mode costs a connect / SELECT 1 / close loop (issue 15).

    sudo .venv/bin/python tests/bench/overhead.py [--iterations 2000] [--rounds 5]

One invocation, one disposable server (workloads/server.py), over the Unix socket and TCP.
In every round each mode runs once, in an order rotated round by round, so that the drift of
a shared machine falls on every mode alike:

    untraced   the loop alone
    bpftrace   the loop beside a bpftrace one-liner counting mysql_close (the peer)
    ebpf       trace-quit --no-agent
    agent      trace-quit --no-bpf
    both       trace-quit (the default)

The loop (churn_loop.py) reports its own wall time and its own process CPU (getrusage
RUSAGE_SELF around the loop: the agent's work is in it, the tracer's is not). The table gives
per-iteration µs of the fastest round (the least disturbed) and its ratio to untraced's
fastest, in brackets the median over rounds of each round's ratio to that round's untraced
run, plus the tracer's own CPU per iteration, start-up included (trace-quit's and its
children's CPU minus the program's). Needs root for the eBPF modes (otherwise only untraced and agent run).
"""

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LOOP = os.path.join(HERE, "churn_loop.py")
TRACE_QUIT = [sys.executable, "-m", "trace_quit.tracer.cli", "--quiet", "--format", "none", "-f"]
MODES = ("untraced", "bpftrace", "ebpf", "agent", "both")
ROOT_MODES = ("bpftrace", "ebpf", "both")
FLAGS = {"ebpf": ["--no-agent"], "agent": ["--no-bpf"], "both": []}


class BenchError(Exception):
    """Something the benchmark needs is missing: one line saying what."""


def client_library(python):
    """The libmariadb/libmysqlclient that ``python``'s MySQLdb links (bpftrace's uprobe target)."""
    so = subprocess.run([python, "-c", "import MySQLdb._mysql as m; print(m.__file__)"], capture_output=True,
                        text=True, check=True).stdout.strip()
    for line in subprocess.run(["ldd", so], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and ("libmariadb" in parts[0] or "libmysqlclient" in parts[0]):
            return os.path.realpath(parts[2])
    raise BenchError("%s links no libmariadb/libmysqlclient" % so)


def run_with_bpftrace(library, command, cwd):
    """Run ``command`` under the peer one-liner; return the number of mysql_close it counted.

    ``bpftrace -c`` starts the command once the probe is in and stops with it; ``cpid``
    keeps the count to that process (a uprobe fires for every process using the library)."""
    program = "uprobe:%s:mysql_close /pid == cpid/ { @closes = count(); }" % library
    # -c splits its argument on spaces, with no quoting: exec the command from a script.
    script = os.path.join(cwd, "bpftrace-loop.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexec %s >/dev/null\n" % " ".join(shlex.quote(a) for a in command))
    os.chmod(script, 0o755)
    proc = subprocess.run(["bpftrace", "-e", program, "-c", "/bin/sh " + script], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise BenchError("bpftrace failed (%d): %s" % (proc.returncode, proc.stderr.strip()[-500:]))
    for line in proc.stdout.splitlines():
        if line.startswith("@closes:"):
            return int(line.split(":")[1])
    return 0


def run_once(mode, dsn, iterations, workdir, python, library, name=None):
    """One run of the loop in ``mode``: the loop's own figures plus the tracer's CPU."""
    out = os.path.join(workdir, "%s.json" % mode)
    loop = [python, LOOP, dsn, str(iterations), out]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    extra = {}
    if mode == "untraced":
        subprocess.run(loop, check=True, cwd=workdir, stdout=subprocess.DEVNULL)
    elif mode == "bpftrace":
        extra["peer_closes"] = run_with_bpftrace(library, loop, workdir)
    else:
        capture = os.path.join(workdir, "%s.tqcap" % (name or mode))
        proc = subprocess.run(TRACE_QUIT + ["-o", capture] + FLAGS[mode] + ["--"] + loop, cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise BenchError("trace-quit %s failed (%d): %s" % (mode, proc.returncode, proc.stderr.strip()[-500:]))
        extra["capture"] = capture
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out) as f:
        data = json.load(f)
    children = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    data["children_cpu_ns"] = int(children * 1e9)
    data.update(extra)
    return data


def measure(modes, transports, iterations, rounds, python, progress=None, keep_in=None):
    """Run every mode ``rounds`` times per transport, interleaved and rotated: {(transport, mode): [runs]}.

    ``keep_in``: a directory where the captures stay (run["capture"]); else they go with a
    temporary one."""
    from trace_quit.workloads.server import DisposableServer

    library = client_library(python) if "bpftrace" in modes else None
    runs = {}
    with DisposableServer() as server, tempfile.TemporaryDirectory() as tmp:
        workdir = keep_in or tmp
        os.chmod(workdir, 0o755)
        for transport in transports:
            dsn = server.dsn_socket if transport == "socket" else server.dsn_tcp
            for r in range(rounds):
                order = list(modes[r % len(modes):]) + list(modes[:r % len(modes)])
                for mode in order:
                    if progress:
                        progress("%s round %d/%d: %s" % (transport, r + 1, rounds, mode))
                    runs.setdefault((transport, mode), []).append(
                        run_once(mode, dsn, iterations, workdir, python, library, "%s-%s-%d" % (transport, mode, r)))
    return runs


def summarise(runs, iterations):
    """Per (transport, mode): fastest-round wall and CPU per iteration, ratios to untraced."""
    rows = {}
    for (transport, mode), samples in runs.items():
        wall = min(s["wall_ns"] for s in samples) / iterations / 1000
        cpu = min(s["cpu_ns"] for s in samples) / iterations / 1000
        # The tracer's CPU: what trace-quit and its children used, less the program's own.
        tracer = min(max(0, s["children_cpu_ns"] - s["total_cpu_ns"]) for s in samples) / iterations / 1000
        close = sorted(sorted(s["close_ns"])[len(s["close_ns"]) // 2] for s in samples)[0] / 1000
        connect = sorted(sorted(s["connect_ns"])[len(s["connect_ns"]) // 2] for s in samples)[0] / 1000
        rows[(transport, mode)] = {"wall_us": wall, "cpu_us": cpu, "tracer_cpu_us": tracer,
                                   "connect_median_us": connect, "close_median_us": close,
                                   "rounds": len(samples)}
    for (transport, mode), row in rows.items():
        base = rows.get((transport, "untraced"))
        if base:
            row["wall_ratio"] = row["wall_us"] / base["wall_us"]
            row["cpu_ratio"] = row["cpu_us"] / base["cpu_us"]
            # Paired: each round against the untraced run of the same round, then the median.
            pairs = list(zip(runs[(transport, mode)], runs[(transport, "untraced")]))
            row["wall_ratio_paired"] = statistics.median(a["wall_ns"] / b["wall_ns"] for a, b in pairs)
            row["cpu_ratio_paired"] = statistics.median(a["cpu_ns"] / b["cpu_ns"] for a, b in pairs)
    return rows


def table(rows):
    out = ["| transport | mode | wall µs/iter | wall vs untraced | CPU µs/iter | CPU vs untraced "
           "| close median µs | tracer CPU µs/iter |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]

    def ratio(row, key):
        if key not in row:
            return "-"
        return "%.3f (%.3f)" % (row[key], row[key + "_paired"])

    for (transport, mode), row in rows.items():
        out.append("| %s | %s | %.0f | %s | %.0f | %s | %.1f | %s |" % (
            transport, mode, row["wall_us"], ratio(row, "wall_ratio"), row["cpu_us"], ratio(row, "cpu_ratio"),
            row["close_median_us"], "%.0f" % row["tracer_cpu_us"] if mode in FLAGS else "-"))
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transports", default="socket,tcp")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--python", default=sys.executable, help="the traced program's interpreter")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error("unknown mode(s): %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(MODES)))
    if os.geteuid() != 0:
        modes = [m for m in modes if m not in ROOT_MODES]
        sys.stderr.write("overhead: not root: measuring only %s\n" % ", ".join(modes))
    started = time.time()

    def progress(text):
        sys.stderr.write("\r%-40s" % text)
        sys.stderr.flush()

    try:
        runs = measure(modes, args.transports.split(","), args.iterations, args.rounds, args.python, progress)
    except BenchError as exc:
        sys.stderr.write("\noverhead: %s\n" % exc)
        return 2
    sys.stderr.write("\n")
    rows = summarise(runs, args.iterations)
    print("machine: %s, %d cores, kernel %s, %s; %.0f s" % (platform.machine(), os.cpu_count(), platform.release(),
                                                            time.strftime("%Y-%m-%d"), time.time() - started))
    print("command: tests/bench/overhead.py %s (%d iterations x %d rounds per mode; fastest round)" % (
        " ".join(argv if argv is not None else sys.argv[1:]), args.iterations, args.rounds))
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"%s/%s" % key: row for key, row in rows.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
