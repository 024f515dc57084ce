"""CI smoke run of the event-throughput benchmark (tests/bench/throughput.py): a short burst
of mysql_close on never-connected handles under `trace-quit --no-agent`, exact counts, no loss.

The full benchmark (>= 200,000 mysql_close/s for 10 s) is run by hand; this one keeps to a
rate the tracer sustains with room to spare on a shared 2-CPU runner, so that a failure
means lost or miscounted events, not a busy machine.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import throughput  # noqa: E402  (tests/bench/throughput.py)

pytestmark = [pytest.mark.bpf]

CLOSES = 60000
RATE = 40000  # 1.5 s; 80,000 events/s


def test_a_burst_of_closes_is_captured_exactly(tmp_path):
    try:
        burst = throughput.compile_burst(str(tmp_path))
    except throughput.BenchError as exc:
        pytest.skip(str(exc))  # names the missing compiler or client headers
    run = throughput.run_traced(burst, ["-n", str(CLOSES), "-r", str(RATE)], str(tmp_path / "burst.tqcap"))
    assert run["burst"]["closes"] == CLOSES
    assert throughput.check_exact(run) == []
    assert run["counts"]["bpf_close"] == run["counts"]["bpf_close_ret"] == CLOSES
    assert run["stats"]["dropped"] == 0
    # burst links the client library itself: probed as linked, not guessed.
    targets = run["probes"]["targets"]
    assert targets["command"]["python"] is False
    assert any(c["how"] == "linked by %s" % burst for c in targets["client_libs"])
    # The probes were handed to detached closers and are gone within a few seconds.
    assert run["orphans"] >= 1 and run["t_gone"] is not None
    assert (run["t_gone"] - run["t_exit"]) / 1e9 < 10
