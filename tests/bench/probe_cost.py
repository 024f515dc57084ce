"""Benchmark: what each of our BPF programs costs the connect / SELECT 1 / close loop (issue 15).

    sudo .venv/bin/python tests/bench/probe_cost.py [--iterations 2000]

The loop (churn_loop.py, over the Unix socket) runs under a BpfSession the way the CLI runs
a program (tests/system/bpf_harness.py), with the kernel's BPF run-time statistics switched
on (``kernel.bpf_stats_enabled``, put back afterwards). Once the loop has exited, while the
probes are still loaded, each program's ``run_cnt`` and ``run_time_ns`` are read
(BPF_OBJ_GET_INFO_BY_FD): how often it ran per iteration and how long our code took. The
statistics count the program only, not the trap that enters a uprobe nor the slow system
call path a syscall tracepoint puts every task on: the difference between this total and
the eBPF row of tests/bench/overhead.py is the kernel's mechanism.
"""

import argparse
import ctypes
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/ (system.bpf_harness)
LOOP = os.path.join(HERE, "churn_loop.py")
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
BPF_OBJ_GET_INFO_BY_FD = 15
_NR_BPF = 321  # x86_64
# struct bpf_prog_info (include/uapi/linux/bpf.h): the offsets read here, checked through the
# program's name at offset 64 (a wrong layout cannot pass for a right one).
INFO_LEN = 224
OFF_NAME, OFF_RUN_TIME_NS, OFF_RUN_CNT = 64, 192, 200


class BenchError(Exception):
    """Something the benchmark needs is missing: one line saying what."""


def prog_stats(fd, name):
    """(run_cnt, run_time_ns) of the BPF program behind ``fd``."""
    libc = ctypes.CDLL(None, use_errno=True)
    info = ctypes.create_string_buffer(INFO_LEN)
    attr = ctypes.create_string_buffer(16)
    ctypes.memmove(attr, ctypes.byref(ctypes.c_uint32(fd)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 4, ctypes.byref(ctypes.c_uint32(INFO_LEN)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 8, ctypes.byref(ctypes.c_uint64(ctypes.addressof(info))), 8)
    if libc.syscall(_NR_BPF, BPF_OBJ_GET_INFO_BY_FD, attr, 16) != 0:
        raise BenchError("BPF_OBJ_GET_INFO_BY_FD: %s" % os.strerror(ctypes.get_errno()))
    kernel_name = info.raw[OFF_NAME:OFF_NAME + 16].split(b"\0", 1)[0].decode()
    if not name.startswith(kernel_name) or not kernel_name:
        raise BenchError("bpf_prog_info layout: name %r at offset %d is not %r" % (kernel_name, OFF_NAME, name))
    run_time = int.from_bytes(info.raw[OFF_RUN_TIME_NS:OFF_RUN_TIME_NS + 8], "little")
    run_cnt = int.from_bytes(info.raw[OFF_RUN_CNT:OFF_RUN_CNT + 8], "little")
    return run_cnt, run_time


def measure(iterations, python=sys.executable):
    """Run the loop once under the eBPF layer with BPF statistics on: (rows, loop result).

    rows: {program: (run_cnt, run_time_ns, [what it hooks])}, for the programs attached."""
    if os.geteuid() != 0:
        raise BenchError("needs root (sudo): it loads the probes and switches kernel.bpf_stats_enabled on")
    from system.bpf_harness import trace_command
    from trace_quit.workloads.server import DisposableServer

    rows = {}

    def read_stats(session):
        probes = session.describe()["probes"]
        for name, fn in session._bpf.funcs.items():
            name = name.decode()
            symbols = sorted({p.get("symbol", "") for p in probes if p.get("fn") == name})
            if symbols:
                rows[name] = prog_stats(fn.fd, name) + (symbols,)

    with open(STATS_SYSCTL) as f:
        previous = f.read().strip()
    with DisposableServer() as server, tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "loop.json")
        with open(STATS_SYSCTL, "w") as f:
            f.write("1")
        try:
            traced = trace_command([python, LOOP, server.dsn_socket, str(iterations), out],
                                   before_detach=read_stats)
        finally:
            with open(STATS_SYSCTL, "w") as f:
                f.write(previous)
        if traced.status != 0:
            raise BenchError("the loop exited with %s" % traced.status)
        with open(out) as f:
            loop = json.load(f)
    return rows, loop


def table(rows, iterations):
    """docs/performance.md's table: per program, runs and µs per iteration, most expensive first."""
    n = iterations
    lines = ["| program | hooks | runs per iteration | ns per run | µs per iteration |", "|---|---|---:|---:|---:|"]
    total_cnt = total_ns = 0
    for name, (cnt, ns, symbols) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        if not cnt:
            continue
        total_cnt += cnt
        total_ns += ns
        hooks = ", ".join(symbols) if len(symbols) <= 2 else "%s (+%d)" % (symbols[0], len(symbols) - 1)
        lines.append("| %s | %s | %.2f | %.0f | %.2f |" % (name, hooks, cnt / n, ns / cnt, ns / n / 1000))
    lines.append("| all | | %.2f | %.0f | %.2f |" % (total_cnt / n, total_ns / max(total_cnt, 1), total_ns / n / 1000))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args(argv)
    rows, loop = measure(args.iterations)
    print("connect / SELECT 1 / close over the Unix socket, %d iterations under the eBPF layer; "
          "loop CPU %.1f µs per iteration" % (args.iterations, loop["cpu_ns"] / args.iterations / 1000))
    print()
    print(table(rows, args.iterations))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print("probe_cost.py: %s" % exc, file=sys.stderr)
        sys.exit(1)
