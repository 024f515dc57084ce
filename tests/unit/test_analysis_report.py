"""build_report on whole captures: the JSON contract, capture status, losses, and any input."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trace_quit.analysis import build_report, load, render
from trace_quit.analysis.capture import from_records
from synth import SynthCapture, known_causes
from trace_quit.tracer import events as ev

CONTRACT = {
    "schema": None,
    "program": {"argv", "exit_status", "duration_s"},
    "layers": {"bpf", "agent", "sampler"},
    "connections": {"opened", "com_quit", "never_closed", "max_live"},
    "com_quit": {"by_cause", "gc_by_generation", "wire"},
    "gc": {"collections", "by_generation", "that_closed_connections"},
    "drops": None, "engines": None, "findings": None, "lost_events": None,
}


def test_json_has_every_contract_key(tmp_path):
    doc = json.loads(render(build_report(load(known_causes(str(tmp_path / "k.tq")))), "json"))
    for key, sub in CONTRACT.items():
        assert key in doc, key
        if sub:
            assert sub <= set(doc[key]), (key, sub - set(doc[key]))
    assert doc["schema"] == "trace-quit/report/1"
    assert set(doc["com_quit"]["by_cause"]) == set(ev.CAUSES)
    assert set(doc["com_quit"]["wire"]) == set(ev.WIRE_STATES)
    assert {"0", "1", "2"} <= set(doc["com_quit"]["gc_by_generation"])
    for c in doc["gc"]["that_closed_connections"]:
        assert {"t_s", "generation", "collected", "connections", "thread", "triggered_at"} <= set(c)
    for d in doc["drops"]:
        assert {"t_s", "from", "to", "duration_ms", "cause", "generation", "explanation"} <= set(d)
    for f in doc["findings"]:
        assert {"severity", "title", "evidence", "fix"} <= set(f)
    assert doc["program"]["argv"] == ["python", "-m", "trace_quit.workloads", "known-causes"]
    assert doc["program"]["exit_status"] == 0 and doc["program"]["duration_s"] == 0.444
    assert len(doc["quits"]) == 39 and doc["quits"][0]["conn"].startswith("0x")
    assert doc["capture_status"] == "complete" and doc["lost_events"] == 0


def test_engine_json_keys(tmp_path):
    s = SynthCapture(str(tmp_path / "e.tq"))
    e = s.engine(0.1)
    s.close(0.3, s.open(0.2, engine=e), ev.EXPLICIT_CLOSE)
    s.finish(1.0)
    doc = json.loads(render(build_report(load(s.path)), "json"))
    [eng] = doc["engines"]
    assert eng["call_site"] == "config/database.py:22 in get_db_session"
    assert (eng["created"], eng["disposed"], eng["connections"]) == (1, 0, 1)


def test_several_reports_in_one_json_document(tmp_path):
    a = build_report(load(known_causes(str(tmp_path / "a.tq"))))
    b = build_report(load(known_causes(str(tmp_path / "b.tq"), layers=("agent",))))
    doc = json.loads(render([a, b], "json"))
    assert doc["schema"] == "trace-quit/reports/1" and len(doc["reports"]) == 2
    assert [r["layers"]["bpf"] for r in doc["reports"]] == [True, False]


def test_truncated_capture_says_so(tmp_path):
    path = known_causes(str(tmp_path / "t.tq"), )
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-20])  # the trailer cut mid-line
    r = build_report(load(path))
    assert r.capture_status == "truncated" and r.capture_detail == "truncated"
    assert r.com_quit.by_cause["shutdown"] == 3  # everything before the cut is still explained
    assert json.loads(render(r, "json"))["capture_status"] == "truncated"


def test_damaged_capture_says_where(tmp_path):
    path = known_causes(str(tmp_path / "d.tq"))
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    lines[100] = b"\x00garbage"
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))
    r = build_report(load(path))
    assert r.capture_status == "damaged" and r.capture_detail == "damaged at line 101"
    [f] = [f for f in r.findings if f.title == "the capture is damaged at line 101"]
    assert "not read" in f.evidence
    assert "damaged at line 101" in render(r, "text")


def test_lost_events_from_the_trailer_and_the_stream(tmp_path):
    s = SynthCapture(str(tmp_path / "l.tq"))
    s.emit({"k": ev.AGENT_LOST, "t": s.ns(0.5), "src": "agent", "pid": s.pid, "tid": s.pid, "n": 3})
    s.emit({"k": ev.AGENT_LOST, "t": s.ns(0.6), "src": "agent", "pid": s.pid, "tid": s.pid, "n": 2})
    s.finish(1.0, lost={"agent": 5, "bpf": 7})
    r = build_report(load(s.path))
    assert r.lost_events == 12 and r.lost_by_source == {"agent": 5, "bpf": 7}
    assert any(f.title == "12 events were lost" for f in r.findings)


def test_header_layers_are_confirmed_by_events(tmp_path):
    # A capture whose header does not declare its layers: the events present say.
    s = SynthCapture(str(tmp_path / "h.tq"), declare_layers=False)
    s.close(0.2, s.open(0.1), ev.EXPLICIT_CLOSE)
    s.finish(1.0)
    r = build_report(load(s.path))
    assert (r.layers.agent, r.layers.bpf, r.layers.wire, r.layers.sampler) == (True, True, True, False)


def test_tracer_notes_become_findings(tmp_path):
    s = SynthCapture(str(tmp_path / "n.tq"))
    s.note(0.1, "uprobe mysql_close could not attach")
    s.finish(1.0)
    r = build_report(load(s.path))
    assert r.notes == [{"t_s": 0.1, "level": "warning", "text": "uprobe mysql_close could not attach"}]
    assert any(f.title == "tracer: uprobe mysql_close could not attach" for f in r.findings)


def test_an_empty_capture_reports_nothing_happened(tmp_path):
    s = SynthCapture(str(tmp_path / "e.tq"))
    s.finish(0.5)
    r = build_report(load(s.path))
    assert r.connections.opened == 0 and r.drops == [] and r.patterns == [] and r.engines == []
    for fmt in ("text", "json", "html"):
        assert render(r, fmt)


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 2 ** 64), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(list(ev.CAUSES) + ["gc", "0x10", "12"]))
_value = st.one_of(_scalar, st.lists(_scalar, max_size=3), st.dictionaries(st.text(max_size=4), _scalar, max_size=3))
_kinds = st.sampled_from([ev.CONN_OPEN, ev.CONN_FAIL, ev.CONN_CLOSE, ev.CONN_DESTROY, ev.ENGINE_CREATE,
                          ev.ENGINE_DISPOSE, ev.ENGINE_DESTROY, ev.POOL, ev.GC_START, ev.GC_STOP, ev.BPF_CONNECT,
                          ev.BPF_CLOSE, ev.BPF_CLOSE_RET, ev.BPF_WIRE, ev.BPF_GC_START, ev.BPF_GC_DONE,
                          ev.SERVER_COUNT, ev.CHILD_START, ev.CHILD_EXIT, ev.BPF_EXIT, ev.AGENT_START,
                          ev.AGENT_LOST, ev.BPF_STATS, ev.TRACER_NOTE, "gc_counts", "bpf_probes", "module", "x"])
_event = st.fixed_dictionaries(
    {"k": _kinds, "t": st.one_of(st.integers(0, 10 ** 10), _scalar)},
    optional={"pid": st.one_of(st.integers(1, 3), _scalar), "tid": st.one_of(st.integers(1, 3), _scalar),
              "conn": st.one_of(st.integers(1, 4), _scalar), "engine": st.one_of(st.integers(1, 3), _scalar),
              "cause": _scalar, "gen": st.one_of(st.integers(0, 2), _scalar),
              "cid": st.one_of(st.integers(1, 3), _scalar),
              "ev": st.sampled_from(["connect", "checkout", "close", "invalidate", None]), "src": _scalar,
              "count": _scalar, "status": _scalar, "head": _scalar, "wire": _scalar, "stack": _value,
              "site": _scalar, "by_gen": _value, "probes": _value, "error": _scalar, "thread": _scalar,
              "collected": _scalar, "ok": _scalar, "n": _scalar, "dropped": _scalar, "text": _scalar})


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event, max_size=40),
       st.one_of(st.none(), st.fixed_dictionaries({"lost": _value, "exit_status": _scalar})),
       st.dictionaries(st.sampled_from(["layers", "cwd", "argv", "child_pid", "t"]), _value, max_size=3))
def test_any_events_give_a_report_and_every_renderer_works(events, trailer, header):
    header = dict(header, format=ev.FORMAT, version=ev.VERSION)
    # As the reader gives them: records that do not match their kind's schema are left out.
    cap = from_records("fuzz.tq", header, events, trailer)
    r = build_report(cap)
    assert sum(r.com_quit.by_cause.values()) >= r.connections.com_quit
    render(r, "text")
    json.loads(render(r, "json"))


def test_a_program_without_connections_says_so(tmp_path):
    s = SynthCapture(str(tmp_path / "z.tq"), layers=("agent",))
    s.finish(0.1, status=7)
    r = build_report(load(s.path))
    assert r.summary == ["No MySQL connection was opened (neither MySQLdb's connections module nor PyMySQL "
                         "was loaded).", "Missing layer: eBPF (see findings)."]
    assert r.program.exit_status == 7


def test_sqlalchemy_imported_without_a_connection_is_not_said_to_lack_mysqldb(tmp_path):
    # SQLAlchemy 2.x's create_engine("mysql+mysqldb://...") imports the MySQLdb package, whose
    # connections module (what the agent reports) loads only at the first connect.
    s = SynthCapture(str(tmp_path / "z.tq"), layers=("agent",))
    s._agent({"k": ev.MODULE, "t": s.ns(0.05), "pid": s.pid, "tid": s.pid, "name": "sqlalchemy", "version": "2.0.36",
              "file": "/venv/sqlalchemy/__init__.py"})
    s.finish(0.1, status=0)
    r = build_report(load(s.path))
    assert r.summary[0] == ("No MySQL connection was opened (SQLAlchemy 2.0.36 was imported but never connected: "
                            "neither MySQLdb's connections module nor PyMySQL was loaded).")
    assert "never imported MySQLdb" not in render(r, "text")


# --- findings and summary say what happened (issue 16) ----------------------------------------

def test_an_engine_site_without_connections_is_not_said_to_close_them(tmp_path):
    s = SynthCapture(str(tmp_path / "c.tq"))
    used = s.engine(0.1, site="/srv/app/app/worker.py:10 in run")
    for i in range(3):
        s.engine(0.2 + i / 10, site="/srv/app/app/health.py:5 in ping")
    conns = [s.open(1 + i, engine=used) for i in range(4)]
    for i, c in enumerate(conns):
        s.close(5 + i, c, ev.EXPLICIT_CLOSE)
    r = build_report(load(s.finish(10)))
    idle = next(f for f in r.findings if "app/health.py:5" in f.title)
    assert idle.title == "create_engine() ran 3 times at app/health.py:5 in ping; its Engines opened no connection"
    assert idle.severity == "info"
    line = next(x for x in r.summary if "belonged" in x)
    assert line == ("All 4 connections belonged to 1 Engine created at app/worker.py:10 in run (0 disposed) "
                    "(1 other call site opened no connection).")


def test_two_engine_sites_of_equal_weight_are_not_most(tmp_path):
    s = SynthCapture(str(tmp_path / "c.tq"))
    a = s.engine(0.1, site="/srv/app/a.py:1 in f")
    b = s.engine(0.2, site="/srv/app/b.py:1 in g")
    for i, e in enumerate((a, a, b, b)):
        s.close(5 + i, s.open(1 + i, engine=e), ev.EXPLICIT_CLOSE)
    r = build_report(load(s.finish(10)))
    line = next(x for x in r.summary if "belonged" in x)
    assert "most" not in line
    assert line == ("4 connections belonged to Engines from 2 call sites: 2 to 1 Engine created at "
                    "a.py:1 in f; 2 to 1 Engine created at b.py:1 in g.")


class _GcOff(SynthCapture):
    @staticmethod
    def _agent_start(t, pid, parent):
        e = SynthCapture._agent_start(t, pid, parent)
        e["gc_enabled"] = False
        return e


def test_gc_disable_in_effect_is_said(tmp_path):
    s = _GcOff(str(tmp_path / "c.tq"))
    s.close(3, s.open(1), ev.SHUTDOWN)
    r = build_report(load(s.finish(4)))
    assert r.program.gc_disabled
    assert any(x.startswith("gc.disable() was in effect") for x in r.summary)
    assert "gc.disable() was in effect: only explicit gc.collect() calls collected" in render(r, "text")
    s2 = SynthCapture(str(tmp_path / "d.tq"))
    s2.close(3, s2.open(1), ev.SHUTDOWN)
    assert "gc.disable()" not in render(build_report(load(s2.finish(4))), "text")


def test_summary_starts_with_the_verdict_and_ends_with_its_fix(tmp_path):
    s = SynthCapture(str(tmp_path / "c.tq"))
    s.open(1)
    r = build_report(load(s.finish(4)))  # never closed: a warning
    top = r.findings[0]
    assert top.severity == "warning"
    assert r.summary[0] == "WARNING: %s." % top.title and r.summary[-1] == "Fix: " + top.fix


def test_approximate_periods_have_two_significant_figures(tmp_path):
    from synth import engine_per_call
    engine_per_call(str(tmp_path / "e.tq"), n=120, gen1_every_s=0.531, gen1_size=3, spacing_s=0.02)
    r = build_report(load(str(tmp_path / "e.tq")))
    assert any("every ~0.53 s" in p.text for p in r.patterns), [p.text for p in r.patterns]


def test_attached_capture_labels_times_since_attach(tmp_path):
    from trace_quit.tracer.capture import CaptureWriter  # noqa: F401 (the writer SynthCapture uses)
    s = SynthCapture(str(tmp_path / "c.tq"))
    s.close(3, s.open(1), ev.EXPLICIT_CLOSE)
    path = s.finish(4)
    lines = open(path).read().splitlines()
    header = json.loads(lines[0])
    header["attached_pid"] = 4242
    with open(path, "w") as f:
        f.write("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    r = build_report(load(path))
    assert r.program.attached
    assert "attached to a running process: times are seconds since attach" in render(r, "text")
    assert "attached to a running process: times are seconds since attach" in render(r, "html")
    assert json.loads(render(r, "json"))["program"]["attached"] is True
    plain = build_report(load(known_causes(str(tmp_path / "kc.tq"))))
    assert json.loads(render(plain, "json"))["program"]["attached"] is False
    assert "since attach" not in render(plain, "text") + render(plain, "html")


def test_a_long_call_chain_is_cut_in_titles_and_whole_in_the_engines_section(tmp_path):
    s = SynthCapture(str(tmp_path / "c.tq"))
    chain = ["/srv/app/db.py:6 in get_session", "/srv/app/a.py:7 in handle", "/srv/app/b.py:8 in route",
             "/srv/app/main.py:9 in <module>"]
    for i in range(3):
        s.engine(0.1 + i / 10, site=chain[0])
    # the agent's engine_create with its chain (SynthCapture.engine writes none)
    s._agent({"k": ev.ENGINE_CREATE, "t": s.ns(0.5), "pid": s.pid, "tid": s.pid, "engine": 0x1234,
              "site": chain[0], "pool_class": "QueuePool", "pool_size": 5, "max_overflow": 10, "chain": chain})
    for i in range(3):
        s.close(2 + i, s.open(1 + i / 10, engine=0x1234), ev.GC, gen=1, cid=None)
    r = build_report(load(s.finish(10)))
    site = next(x for x in r.engines if x.chain)
    assert site.chain == ["main.py:9 in <module>", "b.py:8 in route", "a.py:7 in handle", "db.py:6 in get_session"]
    assert site.where == "db.py:6 in get_session (called from a.py:7 in handle ← b.py:8 in route ← …)"
    text = render(r, "text")
    assert "call chain: a.py:7 in handle ← b.py:8 in route ← main.py:9 in <module>" in " ".join(text.split())
    # the Engines without a chain (an older agent) are a group of their own
    assert [(x.created, x.chain != []) for x in r.engines] == [(1, True), (3, False)]
