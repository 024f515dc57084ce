"""Benchmark: what tracing costs a connect / SELECT 1 / close loop, traced against untraced.

    sudo .venv/bin/python tests/bench/churn.py [--iterations 2000] [--rounds 4]

Modes run interleaved A-B-C-D in every round (rotated each round) so machine drift
cancels; Unix socket and TCP. Prints medians and p99 of connect and close, and the
whole-loop ratio traced/untraced (median over rounds of the loop's total time), as a
Markdown table for the README. Needs root for the eBPF modes. Not part of CI's pass/fail
beyond a smoke run (tests/system/test_bench_smoke.py).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LOOP = os.path.join(HERE, "churn_loop.py")
MODES = {
    "untraced": None,
    "ebpf": ["--no-agent"],
    "agent": ["--no-bpf"],
    "both": [],
}


def run_mode(mode, dsn, iterations, workdir, python):
    out = os.path.join(workdir, "%s.json" % mode)
    loop = [python, LOOP, dsn, str(iterations), out]
    if MODES[mode] is None:
        cmd = loop
    else:
        cmd = [sys.executable, "-m", "trace_quit.tracer.cli", "--quiet", "--format", "none", "-f",
               "-o", os.path.join(workdir, "%s.tqcap" % mode)] + MODES[mode] + ["--"] + loop
    subprocess.run(cmd, check=True, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(out) as f:
        return json.load(f)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--transports", default="socket,tcp")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--python", default=sys.executable, help="the traced program's interpreter")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    if os.geteuid() != 0:
        modes = [m for m in modes if m in ("untraced", "agent")]
        sys.stderr.write("not root: measuring only %s\n" % ", ".join(modes))

    from trace_quit.workloads.server import DisposableServer

    results = {}
    with DisposableServer() as server, tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o777)
        for transport in args.transports.split(","):
            dsn = server.dsn_socket if transport == "socket" else server.dsn_tcp
            samples = {m: {"connect_ns": [], "close_ns": [], "totals": []} for m in modes}
            for r in range(args.rounds):
                order = modes[r % len(modes):] + modes[:r % len(modes)]
                for mode in order:
                    sys.stderr.write("\r%s round %d/%d: %-9s" % (transport, r + 1, args.rounds, mode))
                    sys.stderr.flush()
                    data = run_mode(mode, dsn, args.iterations, workdir, args.python)
                    samples[mode]["connect_ns"] += data["connect_ns"]
                    samples[mode]["close_ns"] += data["close_ns"]
                    samples[mode]["totals"].append(sum(data["loop_ns"]))
            sys.stderr.write("\n")
            base = samples["untraced"] if "untraced" in samples else None
            for mode in modes:
                s = samples[mode]
                row = {
                    "connect_median_us": statistics.median(s["connect_ns"]) / 1000,
                    "connect_p99_us": pct(s["connect_ns"], 0.99) / 1000,
                    "close_median_us": statistics.median(s["close_ns"]) / 1000,
                    "close_p99_us": pct(s["close_ns"], 0.99) / 1000,
                    "loop_total_s": statistics.median(s["totals"]) / 1e9,
                }
                if base is not None:
                    row["loop_ratio"] = statistics.median(s["totals"]) / statistics.median(base["totals"])
                    row["close_median_ratio"] = statistics.median(s["close_ns"]) / statistics.median(base["close_ns"])
                results["%s/%s" % (transport, mode)] = row

    print("machine: %s, %d cores, kernel %s, %s" % (platform.machine(), os.cpu_count(), platform.release(),
                                                     time.strftime("%Y-%m-%d")))
    print("command: %s (%d iterations x %d rounds per mode)" % (" ".join(["tests/bench/churn.py"] + (argv or sys.argv[1:])),
                                                               args.iterations, args.rounds))
    print()
    print("| transport/mode | connect median µs | connect p99 µs | close median µs | close p99 µs | close vs untraced | loop vs untraced |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key, row in results.items():
        print("| %s | %.1f | %.1f | %.1f | %.1f | %s | %s |" % (
            key, row["connect_median_us"], row["connect_p99_us"], row["close_median_us"], row["close_p99_us"],
            "%.3f" % row["close_median_ratio"] if "close_median_ratio" in row else "-",
            "%.3f" % row["loop_ratio"] if "loop_ratio" in row else "-"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
