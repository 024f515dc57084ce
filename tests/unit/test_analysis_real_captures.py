"""Real captures (recorded here with both layers and the sampler, passwords scrubbed) as fixtures.

tests/unit/data/*.tqcap.gz were recorded with `trace-quit demo` / `trace-quit run` on a
disposable MariaDB 10.11, Python 3.11, mysqlclient 2.3.1, SQLAlchemy 2.1.9:

- known-causes.tqcap: workloads/known_causes.py (7 / 11 / 5 + 13 / 3);
- engine-per-call.tqcap: the study's experiment 1 at full size (500 tasks, 20 workers);
- shared-engine.tqcap: experiment 2.
"""

import dataclasses
import gzip
import os

import pytest

from trace_quit.analysis import build_report, load, render
from trace_quit.analysis.findings import FIX_ENGINE_PER_CALL

DATA = os.path.join(os.path.dirname(__file__), "data")


def capture(tmp_path, name):
    path = tmp_path / name
    with gzip.open(os.path.join(DATA, name + ".gz"), "rb") as f:
        path.write_bytes(f.read())
    return load(str(path))


def only(cap, src):
    """The same capture as if only one layer had recorded it."""
    events = [e for e in cap.events if e.get("src") in (src, "tracer", "sampler")
              and e.get("k") != ("bpf_probes" if src == "agent" else "")]
    header = dict(cap.header, layers={"bpf": src == "bpf", "agent": src == "agent", "sampler": False})
    return dataclasses.replace(cap, events=events, header=header)


@pytest.mark.parametrize("layer", [None, "agent", "bpf"], ids=["both", "agent-only", "bpf-only"])
def test_real_known_causes_exact_from_either_layer(tmp_path, layer):
    cap = capture(tmp_path, "known-causes.tqcap")
    r = build_report(only(cap, layer) if layer else cap)
    assert r.com_quit.by_cause == {"explicit_close": 7, "refcount": 11, "gc": 18, "shutdown": 3,
                                   "never_closed": 0, "server": 0, "unknown": 0}
    assert r.com_quit.gc_by_generation == {"0": 5, "1": 0, "2": 13}
    assert r.connections.opened == 39 and r.connections.max_live == 18
    if layer != "agent":
        assert r.com_quit.wire["confirmed"] == 39
    assert r.program.exit_status == 0 and r.capture_status == "complete"


def test_real_engine_per_call_is_explained_as_in_the_study(tmp_path):
    r = build_report(capture(tmp_path, "engine-per-call.tqcap"))
    site = "/work/main/workloads/engine_per_call.py:40 in get_db_session"
    assert r.connections.opened == 500 and r.connections.com_quit == 500
    assert r.com_quit.by_cause["explicit_close"] == 0
    assert r.com_quit.by_cause["gc"] + r.com_quit.by_cause["shutdown"] == 500
    assert r.com_quit.wire["confirmed"] == 500 and r.lost_events == 0
    # The largest drop while it ran: a generation-2 collection.
    big = r.largest_drop()
    assert (big.cause, big.generation) == ("gc", 2) and big.call_sites == [site]
    assert big.explanation.startswith("at %s s a generation-2 collection on thread ThreadPoolExecutor-" % (
        "%.1f" % big.t_s))
    # The periodic drops: generation-1 collections, the saw-tooth.
    [p] = [p for p in r.patterns if p.regular and p.drops]
    assert p.generation == 1 and p.text.endswith("the saw-tooth of the connection count")
    assert all(d.generation == 1 for d in r.drops if d.cause == "gc" and d is not big)
    # Every Engine at the workload's create_engine() line, and the fix.
    [eng] = r.engines
    assert (eng.call_site, eng.created, eng.disposed, eng.connections) == (site, 500, 0, 500)
    f = [f for f in r.findings if f.severity == "error" and f.call_site == site]
    assert len(f) == 2 and f[0].fix == FIX_ENGINE_PER_CALL
    assert "The largest drop (%d → %d): %s." % (big.from_, big.to, big.explanation) in r.summary


def test_real_shared_engine_has_no_gc_and_stays_within_the_pool(tmp_path):
    r = build_report(capture(tmp_path, "shared-engine.tqcap"))
    assert r.com_quit.by_cause["gc"] == 0 and r.gc.that_closed_connections == []
    assert r.connections.max_live <= 15
    assert [e.created for e in r.engines] == [1]
    assert not [f for f in r.findings if f.severity == "error"]
    # Only the interpreter's exit is a drop: the pool's overflow closes are independent events.
    assert [d.cause for d in r.drops] == ["shutdown"]


def test_real_captures_side_by_side(tmp_path):
    reports = [build_report(capture(tmp_path, n)) for n in ("engine-per-call.tqcap", "shared-engine.tqcap")]
    text = render(reports, "text")
    assert "trace-quit comparison of 2 captures" in text
    html = render(reports, "html")
    assert html.count("<svg") == 3
