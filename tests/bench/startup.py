"""Benchmark: start-up, from typing the command to the program's first line, side by side.

    sudo .venv/bin/python tests/bench/startup.py [--rounds 9] [--other /path/to/other/trace-quit]

Runs ``trace-quit --quiet --format none -- python3 first_line.py`` from a project directory
of its own (the way users run it) and measures the wall time from starting trace-quit to
the program's first line on stdout (the program prints as its first statement). With
``--other``, a second trace-quit (another checkout's, whose directory is not checked: an
older one ran the program elsewhere) runs in turn with this one, A B A B …,
so both see the same machine; it prints each one's fastest and median round and the ratio
of the medians and of the fastest rounds. Also checks, every round, that the program ran in
the project directory.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THIS = os.path.join(REPO, ".venv", "bin", "trace-quit")
PROGRAM = "import os\nprint(os.getcwd(), flush=True)\n"


def first_line_s(trace_quit, project, check=True):
    """Seconds from starting ``trace_quit`` to the program's first line; checks its directory."""
    t0 = time.monotonic()
    proc = subprocess.Popen([trace_quit, "--quiet", "--format", "none", "-o", "bench.tqcap", "--force", "--",
                             "python3", "first_line.py"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    elapsed = time.monotonic() - t0
    proc.communicate()
    if check and line.strip() != project:
        raise SystemExit("%s ran the program in %r, not in %s" % (trace_quit, line.strip(), project))
    return elapsed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--other",
                    help="another trace-quit to compare with (e.g. an older checkout's .venv/bin/trace-quit)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the eBPF layer's start-up is what is measured")
    project = tempfile.mkdtemp(prefix="tq-bench-startup-")
    try:
        with open(os.path.join(project, "first_line.py"), "w") as f:
            f.write(PROGRAM)
        modes = [("this", THIS)] + ([("other", args.other)] if args.other else [])
        times = {name: [] for name, _ in modes}
        first_line_s(THIS, project)  # warm-up: page cache, bcc's first import
        for _ in range(args.rounds):
            for name, tq in modes:
                times[name].append(first_line_s(tq, project, check=name == "this"))
        for name, tq in modes:
            t = times[name]
            print("%-5s fastest %.3f s  median %.3f s  (%d rounds)  %s" % (
                name, min(t), statistics.median(t), len(t), tq))
        if args.other:
            print("this/other: median %.2f, fastest %.2f" % (
                statistics.median(times["this"]) / statistics.median(times["other"]),
                min(times["this"]) / min(times["other"])))
    finally:
        shutil.rmtree(project, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
