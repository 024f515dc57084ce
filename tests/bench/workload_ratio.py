"""Benchmark: the study's engine-per-call workload (scaled), traced against untraced.

    sudo .venv/bin/python tests/bench/workload_ratio.py [--rounds 3] [--tasks 200]

Runs alternate untraced / traced (both layers) so machine drift cancels, with a fixed
seed. Prints the median wall time of each and their ratio, and the CPU time (user+sys)
of everything each run spawned: the program alone untraced, program + tracer traced.
The program's own elapsed time (it prints it) is what tracing costs the program; the
whole command adds the tracer's fixed start-up (compiling the probes, ~1.3 s) and detach;
the CPU figures show what tracing costs the machine.
"""

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(cmd, cwd):
    """(wall s of the whole command, CPU s of everything it spawned, the workload's own elapsed s)."""
    cpu0, t0 = _cpu(), time.monotonic()
    out = subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    own = re.search(r"elapsed=([0-9.]+)s", out)
    return wall, cpu, float(own.group(1)) if own else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: the traced runs load eBPF probes")
    from trace_quit.workloads.server import DisposableServer

    timings = {"untraced": [], "traced": []}
    with DisposableServer() as server, tempfile.TemporaryDirectory() as workdir:
        workload = [sys.executable, "-m", "trace_quit.workloads", "engine-per-call", "--dsn", server.dsn_tcp,
                    "--tasks", str(args.tasks), "--task-seconds", "0.2", "0.6", "--hold-seconds", "0.2",
                    "--seed", str(args.seed)]
        traced = [sys.executable, "-m", "trace_quit.tracer.cli", "--quiet", "--format", "none", "-f",
                  "-o", os.path.join(workdir, "w.tqcap"), "--"] + workload
        for r in range(args.rounds):
            for mode, cmd in (("untraced", workload), ("traced", traced)) if r % 2 == 0 else \
                    (("traced", traced), ("untraced", workload)):
                sys.stderr.write("\rround %d/%d: %-9s" % (r + 1, args.rounds, mode))
                sys.stderr.flush()
                timings[mode].append(run_once(cmd, workdir))
    sys.stderr.write("\n")
    wall = {m: statistics.median(t[0] for t in v) for m, v in timings.items()}
    cpu = {m: statistics.median(t[1] for t in v) for m, v in timings.items()}
    own = {m: statistics.median(t[2] for t in v) for m, v in timings.items()}
    print("engine-per-call, %d tasks, 20 workers, %d rounds (median)" % (args.tasks, args.rounds))
    print("| run | program's own elapsed s | whole command wall s | CPU s (user+sys, incl. tracer) |")
    print("|---|---:|---:|---:|")
    for mode in ("untraced", "traced"):
        print("| %s | %.2f | %.2f | %.2f |" % (mode, own[mode], wall[mode], cpu[mode]))
    print("| traced/untraced | %.3f | %.3f | %.3f |" % (
        own["traced"] / own["untraced"], wall["traced"] / wall["untraced"], cpu["traced"] / cpu["untraced"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
