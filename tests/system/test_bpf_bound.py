"""--max-capture: a capture that reaches its bound mid-run still counts every COM_QUIT by cause.

known-causes (44 COM_QUITs with known causes) runs under both layers twice: unbounded, to
find where in the file its 20th kernel close lands, then bounded there, so the bound falls
mid-run whatever the machine's probe paths make the header weigh. The closes written in
detail plus the kernel's closes counted after the bound must be the known causes exactly,
the report's totals too, and the server's general log must show 44 Quit commands.
"""

import collections
import json
import os
import sys

import pytest

from test_bpf_known_causes import quits_for_user
from tq_support import KNOWN_CAUSES, KNOWN_CAUSES_TOTAL, report_json, run_traced

pytestmark = [pytest.mark.bpf, pytest.mark.server]

ALWAYS = {"note", "child_start", "child_exit", "server_status", "bpf_probes", "agent_lost", "trailer",
          "server_count", "bpf_stats", "gc_counts"}


def lines_of(capture):
    with open(capture) as f:
        return [json.loads(line) for line in f]


def test_a_bound_reached_mid_run_still_counts_every_com_quit_by_cause(bpf_server, tmp_path):
    argv = [sys.executable, "-m", "trace_quit.workloads", "known-causes", "--dsn", bpf_server.dsn_tcp]
    proc, whole = run_traced(tmp_path, argv, bpf=True, name="whole", extra=["--max-capture", "0"])
    assert proc.returncode == 0, proc.stderr
    assert "(--max-capture)" not in proc.stderr
    offset, closes = 0, 0
    with open(whole, "rb") as f:
        for line in f:
            offset += len(line)
            if line.startswith(b'{"k":"bpf_close",'):
                closes += 1
                if closes == 20:
                    break
    bound = offset

    since = bpf_server.general_log_size()
    proc, capture = run_traced(tmp_path, argv, bpf=True, name="bounded", extra=["--max-capture", str(bound)])
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "(--max-capture)" in line]
    assert len(said) == 1 and said[0].startswith("trace-quit: capture reached its %d bytes bound at +" % bound)
    assert said[0].endswith("from now on events are counted, not written (--max-capture)")
    assert quits_for_user(bpf_server, since, bpf_server.user) == KNOWN_CAUSES_TOTAL
    assert os.stat(capture).st_mode & 0o777 == 0o600

    records = lines_of(capture)
    trailer = records[-1]
    assert trailer["k"] == "trailer"
    counted = trailer["bound"]["closes_after"]["kernel"]
    written = collections.Counter((e["cause"], e["gen"]) for e in records if e.get("k") == "bpf_close")
    assert 0 < sum(written.values()) < KNOWN_CAUSES_TOTAL   # the bound fell mid-run
    after = collections.Counter({(c, None): n for c, n in counted["by_cause"].items() if c != "gc"})
    after.update({("gc", int(g)): n for g, n in counted["gc_by_generation"].items()})
    assert sum(counted["by_cause"].values()) == sum(after.values())
    assert dict(written + after) == KNOWN_CAUSES
    assert counted["wire"] == {"confirmed": KNOWN_CAUSES_TOTAL - sum(written.values())}
    assert trailer["bound"]["not_written"]["bpf_close"] == KNOWN_CAUSES_TOTAL - sum(written.values())
    assert trailer["counts"]["bpf_close"] == KNOWN_CAUSES_TOTAL
    # Past the note only the always-written and sampled kinds; the note within one batch of the bound.
    note_at = next(i for i, e in enumerate(records) if e.get("k") == "note" and "bound" in e["text"])
    assert {e.get("k") for e in records[note_at:]} <= ALWAYS
    assert sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in records[:note_at]) <= bound + 16384

    report = report_json(capture, tmp_path)
    by_cause = report["com_quit"]["by_cause"]
    assert {k: v for k, v in by_cause.items() if v} == {"explicit_close": 7, "refcount": 13, "gc": 21, "shutdown": 3}
    assert report["com_quit"]["gc_by_generation"] == {"0": 5, "1": 0, "2": 16}
    assert report["connections"]["com_quit"] == KNOWN_CAUSES_TOTAL
    assert report["connections"]["never_closed"] == 0
    assert report["connections"]["opened"] == KNOWN_CAUSES_TOTAL   # detail + counted after the bound
    assert report["com_quit"]["wire"]["confirmed"] == KNOWN_CAUSES_TOTAL
    assert report["bound"]["max_bytes"] == bound and report["bound"]["closes_after_from"] == "kernel"
    assert any(s.startswith("Capture bound reached at +") and "(--max-capture %d bytes)" % bound in s
               for s in report["summary"])
