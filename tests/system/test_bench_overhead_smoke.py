"""CI smoke run of the overhead benchmark (tests/bench/overhead.py): every mode, both
transports, a few iterations, one round. Exact counts of what each mode saw; no timing
assertions (the full run and its table are in docs/performance.md).
"""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import overhead  # noqa: E402  (tests/bench/overhead.py)

pytestmark = [pytest.mark.bpf]

N = 25


def test_every_mode_runs_the_loop_and_sees_every_close(tmp_path):
    if shutil.which("bpftrace") is None:
        pytest.skip("bpftrace is not installed (scripts/setup.sh installs Debian's bpftrace)")
    from trace_quit.analysis.capture import load

    runs = overhead.measure(overhead.MODES, ("socket", "tcp"), N, 1, sys.executable, keep_in=str(tmp_path))
    assert sorted(runs) == sorted((t, m) for t in ("socket", "tcp") for m in overhead.MODES)
    for (transport, mode), [run] in runs.items():
        assert run["iterations"] == N and len(run["close_ns"]) == N, (transport, mode)
        assert run["cpu_ns"] > 0 and run["wall_ns"] > 0
        if mode == "bpftrace":
            assert run["peer_closes"] == N, transport
        if mode in ("ebpf", "agent", "both"):
            counts = {}
            for e in load(run["capture"], raw=True).events:
                counts[e["k"]] = counts.get(e["k"], 0) + 1
            assert counts.get("conn_close", 0) == (N if mode != "ebpf" else 0), (transport, mode)
            assert counts.get("bpf_close", 0) == (N if mode != "agent" else 0), (transport, mode)
    rows = overhead.summarise(runs, N)
    assert rows[("tcp", "untraced")]["wall_ratio"] == rows[("socket", "untraced")]["cpu_ratio"] == 1.0
    assert len(overhead.table(rows).splitlines()) == 2 + 2 * len(overhead.MODES)


def test_probe_cost_counts_each_connection_once_and_puts_the_sysctl_back():
    # tests/bench/probe_cost.py: the per-program breakdown in docs/performance.md.
    import probe_cost

    with open(probe_cost.STATS_SYSCTL) as f:
        before = f.read()
    rows, loop = probe_cost.measure(N)
    with open(probe_cost.STATS_SYSCTL) as f:
        assert f.read() == before
    assert loop["iterations"] == N
    # One mysql_real_connect and one mysql_close per iteration, entry and return, exactly
    # (and the program names read back through bpf_prog_info's layout).
    for program in ("on_connect", "on_connect_ret", "on_close", "on_close_ret", "on_py_close"):
        run_cnt, run_time_ns, _ = rows[program]
        assert run_cnt == N, program
        assert run_time_ns > 0, program
    assert rows["on_sys_enter"][0] >= 10 * N  # every system call of the machine passes through it
    assert len(probe_cost.table(rows, N).splitlines()) == 3 + sum(1 for r in rows.values() if r[0])
