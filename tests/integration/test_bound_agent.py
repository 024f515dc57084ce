"""--max-capture with the agent alone (no root): past the bound the agent's records are counted
by cause, and the report's totals are known-causes' 44 COM_QUITs exactly (the system test
tests/system/test_bpf_bound.py does the same with both layers)."""

import json
import subprocess
import sys

import pytest

from tq_support import KNOWN_CAUSES_TOTAL, TRACE_QUIT, run_traced

pytestmark = pytest.mark.server


def test_the_agent_alone_counts_every_com_quit_past_the_bound(server, tmp_path):
    proc, capture = run_traced(tmp_path, [sys.executable, "-m", "trace_quit.workloads", "known-causes",
                                          "--dsn", server.dsn_tcp], extra=["--max-capture", "6K"])
    assert proc.returncode == 0, proc.stderr
    assert "capture reached its 6 KiB bound at +" in proc.stderr
    with open(capture) as f:
        records = [json.loads(line) for line in f]
    trailer = records[-1]
    agent = trailer["bound"]["closes_after"]["agent"]
    written = sum(1 for e in records if e.get("k") in ("conn_close", "conn_destroy"))
    assert written + sum(agent["by_cause"].values()) == KNOWN_CAUSES_TOTAL
    assert sum(agent["by_cause"].values()) > 0   # the bound fell before the closes
    out = tmp_path / "report.json"
    subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json", "-o", str(out)], check=True,
                   capture_output=True)
    report = json.loads(out.read_text())
    assert {c: n for c, n in report["com_quit"]["by_cause"].items() if n} == {
        "explicit_close": 7, "refcount": 13, "gc": 21, "shutdown": 3}
    assert report["com_quit"]["gc_by_generation"] == {"0": 5, "1": 0, "2": 16}
    assert report["connections"]["opened"] == KNOWN_CAUSES_TOTAL and report["connections"]["never_closed"] == 0
    assert report["com_quit"]["wire"]["unobserved"] == KNOWN_CAUSES_TOTAL
    assert report["bound"]["closes_after_from"] == "agent"
