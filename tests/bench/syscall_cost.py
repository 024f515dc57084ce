"""What an unrelated process pays per system call while trace-quit runs (issue 15).

    sudo .venv/bin/python tests/bench/syscall_cost.py [--rounds 15] [--calls 200000]

Runs syscall_loop.c (getppid() and 1-byte reads of /dev/zero, a process trace-quit does not
trace) with no tracer, then while `trace-quit --no-agent` traces an idle Python (its probes
attached), then with no tracer again (untraced rounds on both sides cancel drift; attaching
and detaching per round would take seconds), and prints the fastest round of each: the
fastest is the least disturbed by the other work on a shared machine.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def loop_binary(tmp):
    exe = os.path.join(tmp, "syscall_loop")
    subprocess.run(["cc", "-O2", "-o", exe, os.path.join(HERE, "syscall_loop.c")], check=True)
    return exe


def measure(exe, calls):
    out = subprocess.run([exe, str(calls)], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=200000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = loop_binary(tmp)
        capture = os.path.join(tmp, "idle.tqcap")
        go = os.path.join(tmp, "stop")
        idle = "import os, time\nwhile not os.path.exists(%r): time.sleep(0.05)\n" % go
        base, traced = [], []
        for _ in range(args.rounds // 2):
            base.append(measure(exe, args.calls))
        tracer = subprocess.Popen([sys.executable, "-m", "trace_quit.tracer.cli", "--no-agent", "--quiet", "--format",
                                   "none", "-o", capture, "--", sys.executable, "-c", idle])
        try:
            deadline = time.monotonic() + 120
            while not (os.path.exists(capture) and b'"k":"child_start"' in open(capture, "rb").read()):
                if time.monotonic() > deadline or tracer.poll() is not None:
                    sys.exit("trace-quit did not start")
                time.sleep(0.05)
            for _ in range(args.rounds):
                traced.append(measure(exe, args.calls))
            open(go, "w").close()
            tracer.wait(timeout=120)
            for _ in range(args.rounds - args.rounds // 2):
                base.append(measure(exe, args.calls))
        finally:
            if tracer.poll() is None:
                open(go, "w").close()
                tracer.wait(timeout=120)
    for i, name in enumerate(("getppid()", "read(/dev/zero, 1)")):
        b, t = min(r[i] for r in base), min(r[i] for r in traced)
        print("| %s | %.0f ns | %.0f ns | +%.0f ns |" % (name, b, t, t - b))


if __name__ == "__main__":
    main()
