"""Benchmark: what a capture costs per hour (issue 17: a long attach stays bounded).

    sudo .venv/bin/python tests/bench/capture_cost.py [--small 100] [--large 500]

Runs two workloads under ``trace-quit`` (eBPF + agent, --max-capture 0) against one
disposable server, each at two request counts, and takes the difference, so the fixed part
of a capture (header, probe description, trailer) drops out:

- engine-per-call: a new Engine per request (the bug), one connection lifecycle per request:
  connect, SELECT, commit, the Engine and its connection destroyed (gc or refcount);
- shared-engine: one pooled Engine (the fix): a checkout and a checkin per request.

Prints bytes per request for each, and the capture an hour at 100 requests a second.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/ (tq_support)

from tq_support import TRACE_QUIT  # noqa: E402
from trace_quit.workloads.server import DisposableServer  # noqa: E402

WORKLOADS = ("engine-per-call", "shared-engine")


def traced_size(workload, tasks, dsn, directory):
    """(capture bytes, trailer counts) of one traced run of ``workload`` with ``tasks`` requests."""
    capture = os.path.join(directory, "%s-%d.tqcap" % (workload, tasks))
    cmd = TRACE_QUIT + ["--quiet", "--format", "none", "--max-capture", "0", "-f", "-o", capture, "--",
                        sys.executable, "-m", "trace_quit.workloads", workload, "--tasks", str(tasks),
                        "--workers", "4", "--task-seconds", "0", "0.01", "--hold-seconds", "0", "--seed", "1",
                        "--dsn", dsn]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit("%s failed (%d): %s" % (workload, proc.returncode, proc.stderr[-2000:]))
    with open(capture, "rb") as f:
        trailer = json.loads(f.read().splitlines()[-1])
    return os.path.getsize(capture), trailer["counts"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=100, help="requests in the small run (100)")
    parser.add_argument("--large", type=int, default=500, help="requests in the large run (500)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests a second to extrapolate to (100)")
    args = parser.parse_args(argv)
    with DisposableServer() as server, tempfile.TemporaryDirectory() as tmp:
        for workload in WORKLOADS:
            s_small, c_small = traced_size(workload, args.small, server.dsn_tcp, tmp)
            s_large, c_large = traced_size(workload, args.large, server.dsn_tcp, tmp)
            per = (s_large - s_small) / (args.large - args.small)
            conns = c_large.get("bpf_connect", 0) - c_small.get("bpf_connect", 0)
            pool = (c_large.get("pool", 0) - c_small.get("pool", 0)) / (args.large - args.small)
            print("%-16s %5d requests: %9d bytes; %5d: %9d bytes -> %6.0f bytes a request "
                  "(%d more connections, %.1f pool events a request); at %g requests/s: %.0f MB an hour"
                  % (workload, args.small, s_small, args.large, s_large, per, conns, pool, args.rate,
                     per * args.rate * 3600 / 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
