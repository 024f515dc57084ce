"""A capture that reached its --max-capture bound: the report says where the detail stops and
counts the connection ends after it (analysis/bound.py)."""

import json
import os

import jsonschema

from synth import SynthCapture
from trace_quit.analysis import build_report, load, render
from trace_quit.tracer import events as ev

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "report.schema.json")


def bounded_capture(path):
    """4 connections opened and 2 closed in the detail; then the bound; then 2 of the open ones
    and a fifth connection end (gc generation 2, refcount, refcount), counted, not written."""
    s = SynthCapture(path)
    a, b, c, d = (s.open(0.1 + i * 0.01) for i in range(4))
    s.close(0.2, a, ev.EXPLICIT_CLOSE)
    s.collection(0.3, 2, destroy=[b])
    s.w.max_bytes = 1   # the bound, reached by the next event (the writer's test sizes it in bytes)
    s.collection(0.4, 2, destroy=[c])
    s.close(0.5, d, ev.REFCOUNT)
    e = s.open(0.6)
    s.close(0.7, e, ev.REFCOUNT)
    return s.finish(1.0)


def test_the_report_counts_the_ends_after_the_bound_and_says_where_it_is(tmp_path):
    r = build_report(load(bounded_capture(str(tmp_path / "b.tqcap"))))
    assert r.com_quit.by_cause == {"explicit_close": 1, "refcount": 2, "gc": 2, "shutdown": 0,
                                   "never_closed": 0, "server": 0, "unknown": 0}
    assert r.com_quit.gc_by_generation == {"0": 0, "1": 0, "2": 2}
    assert r.connections.opened == 5 and r.connections.com_quit == 5 and r.connections.never_closed == 0
    assert r.bound["closes_after"] == {"gc": 1, "refcount": 2}
    assert r.bound["closes_after_gc_by_generation"] == {"2": 1}
    assert r.bound["closes_after_from"] == "kernel" and r.bound["open_at_bound"] == 2
    assert r.bound["t_s"] == 0.4 and r.bound["opened_after"] == 1
    assert r.com_quit.wire["confirmed"] == 5
    line = next(x for x in r.summary if x.startswith("Capture bound reached"))
    assert line.startswith("Capture bound reached at +0.400 s (--max-capture 1 byte): ")
    assert "after it 1 opened and connection ends by cause (the kernel's): refcount 2, gc 1 (gen 2: 1)" in line
    text = render([r], "text")
    assert "Capture bound reached at +0.400 s" in text
    assert "open at the bound" in text and "still open when the capture stopped" not in text
    assert "Capture bound reached at +0.400 s" in render([r], "html")
    doc = json.loads(render([r], "json"))
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.validators.validator_for(schema)(schema).validate(doc)
    assert doc["bound"]["not_written"] == r.bound["not_written"] > 0
    assert doc["com_quit"]["by_cause"]["refcount"] == 2


def test_without_the_bound_the_report_has_no_bound(tmp_path):
    s = SynthCapture(str(tmp_path / "u.tqcap"), max_bytes=10**9)
    s.close(0.2, s.open(0.1), ev.REFCOUNT)
    r = build_report(load(s.finish(1.0)))
    assert r.bound is None
    assert "bound" not in json.loads(render([r], "json"))
    assert not any("bound" in x for x in r.summary)


def test_agent_records_written_before_their_kernel_twins_were_counted_are_counted_once(tmp_path):
    # The agent's channel and the ring buffer arrive at their own pace: here the agent's
    # conn_destroy of ``a`` and conn_open of ``f`` are written, then the bound is reached and
    # the kernel's bpf_close of ``a`` and bpf_connect of ``f`` are counted, not written.
    s = SynthCapture(str(tmp_path / "late.tqcap"))
    a = s.open(0.1)
    f = s.new_conn()
    s._agent({"k": ev.CONN_DESTROY, "t": s.ns(0.5), "pid": s.pid, "tid": s.pid, "conn": a, "cause": ev.REFCOUNT,
              "gen": None, "cid": None})
    s._agent({"k": ev.CONN_OPEN, "t": s.ns(0.6), "pid": s.pid, "tid": s.pid, "conn": f, "stack": [],
              "thread": "MainThread"})
    s.w.max_bytes = 1
    s._bpf({"k": ev.BPF_CLOSE, "t": s.ns(0.5001), "pid": s.pid, "tid": s.pid, "conn": a, "cause": ev.REFCOUNT,
            "gen": None, "self": 0, "sock": True, "last_errno": 0, "eof": False})
    s._bpf({"k": ev.BPF_CONNECT, "t": s.ns(0.5999), "pid": s.pid, "tid": s.pid, "conn": f, "ok": True,
            "t0": s.ns(0.59), "fd": 9})
    s.close(0.7, f, ev.REFCOUNT)
    r = build_report(load(s.finish(1.0)))
    assert r.bound["closes_after"] == {"refcount": 2} and r.bound["opened_after"] == 1
    assert r.com_quit.by_cause["refcount"] == 2 and r.connections.com_quit == 2
    assert r.connections.opened == 2 and r.connections.never_closed == 0


def test_ends_after_the_bound_are_decided_by_the_reports_rules(tmp_path):
    # Past the bound the writer keeps the kernel's evidence of each end (rows), and the report
    # decides them as it would in the detail: a server-ended connection is "server", a close the
    # kernel could not attribute is "unknown" -- never the kernel's raw refcount/explicit_close.
    s = SynthCapture(str(tmp_path / "s.tqcap"))
    a, b, c = (s.open(0.1 + i * 0.01) for i in range(3))
    s.w.max_bytes = 1
    s.close(0.3, a, ev.REFCOUNT, sock=False, last_errno=2013)    # the library had dropped its socket
    s.close(0.4, b, ev.EXPLICIT_CLOSE, fin_first=True, tcp_from="close_wait")  # the server's FIN first
    s.close(0.5, c, ev.UNKNOWN)
    r = build_report(load(s.finish(1.0)))
    assert r.bound["closes_after"] == {"server": 2, "unknown": 1}
    assert r.com_quit.by_cause["server"] == 2 and r.com_quit.by_cause["unknown"] == 1
    assert r.connections.server == 2 and r.connections.com_quit == 1
