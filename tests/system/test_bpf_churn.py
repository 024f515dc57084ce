"""issue 5: no event is lost on a 10,000-connection churn, and losses are counted when they happen."""

import collections
import time

import pytest

from bpf_harness import our_uprobe_events, trace_command
from tq_support import VENV_PY

pytestmark = [pytest.mark.bpf, pytest.mark.server]

CHURN = r"""
import sys, MySQLdb
from trace_quit.workloads import dsn
kw = dsn.parse(sys.argv[1])
for _ in range(int(sys.argv[2])):
    MySQLdb.connect(**kw).close()
"""


@pytest.mark.slow
def test_ten_thousand_connections_lose_no_event(bpf_server, tmp_path):
    n = 10000
    t0 = time.monotonic()
    run = trace_command([VENV_PY, "-c", CHURN, bpf_server.dsn_socket, str(n)], output_path=str(tmp_path / "out"))
    elapsed = time.monotonic() - t0
    assert run.status == 0, run.output
    assert run.stats["dropped"] == 0
    assert run.stats["emitted"] == len([e for e in run.events if e["k"] != "bpf_stats"])
    kinds = collections.Counter(e["k"] for e in run.events)
    assert kinds["bpf_close"] == n and kinds["bpf_close_ret"] == n and kinds["bpf_connect"] == n
    assert run.close_causes() == {("explicit_close", None): n}
    assert run.wire_states() == {"confirmed": n}
    assert our_uprobe_events() == []  # ours only: other suites run on this machine
    print("churn: %d connections traced in %.1f s, %d events, 0 dropped" % (n, elapsed, run.stats["emitted"]))


def test_a_full_ring_buffer_counts_its_losses(bpf_server, tmp_path):
    # One page (~60 events) and no drain until the end: most events cannot be reserved.
    n = 200
    run = trace_command([VENV_PY, "-c", CHURN, bpf_server.dsn_socket, str(n)], output_path=str(tmp_path / "out"),
                        ringbuf_pages=1, poll_interval=3600)
    assert run.status == 0, run.output
    delivered = len([e for e in run.events if e["k"] != "bpf_stats"])
    assert run.stats["dropped"] > 0
    assert run.stats["emitted"] == delivered
    # connect, close, close_ret, one wire event per connection, plus fork/exit/gc/finalize extras.
    assert run.stats["emitted"] + run.stats["dropped"] >= 4 * n
    assert run.of("bpf_stats")[-1]["dropped"] == run.stats["dropped"]
