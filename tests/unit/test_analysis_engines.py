"""Engines by create_engine() call site, and the findings tied to them."""

from trace_quit.analysis import build_report, load
from trace_quit.analysis.engines import pool_bound
from trace_quit.analysis.findings import FIX_ENGINE_PER_CALL
from synth import SynthCapture
from trace_quit.tracer import events as ev


def test_connections_are_tied_to_the_engine_and_its_call_site(tmp_path):
    s = SynthCapture(str(tmp_path / "e.tq"), cwd="/srv/app")
    sites = {"a": "/srv/app/config/database.py:22 in get_db_session", "b": "/opt/other/jobs.py:7 in run"}
    engines = {"a": [s.engine(0.1 + i * 0.1, site=sites["a"]) for i in range(7)],
               "b": [s.engine(0.05, site=sites["b"], pool_class="NullPool", pool_size=None, max_overflow=None)]}
    conns = [s.open(1.0 + i * 0.01, engine=e) for i, e in enumerate(engines["a"])]
    conns += [s.open(1.5, engine=engines["b"][0]) for _ in range(2)]
    s.collection(2.0, 1, destroy=conns[:7], engines=engines["a"])
    s.close(2.5, conns[7], ev.EXPLICIT_CLOSE)
    s.finish(3.0)
    r = build_report(load(s.path))
    a, b = r.engines
    assert (a.call_site, a.created, a.disposed, a.connections) == ("config/database.py:22 in get_db_session", 7, 0, 7)
    assert a.destroyed == {"gc": 7} and a.connections_by_cause == {"gc": 7} and a.gc_by_generation == {"1": 7}
    assert (a.pool_class, a.pool_size, a.max_overflow, a.max_live_engines, a.max_live_connections) == (
        "QueuePool", 5, 10, 7, 7)
    # Outside the program's directory the site stays absolute.
    assert (b.call_site, b.created, b.connections, b.pool_class) == ("/opt/other/jobs.py:7 in run", 1, 2, "NullPool")
    assert b.connections_by_cause == {"explicit_close": 1, "never_closed": 1}
    assert pool_bound(a) == 15 and pool_bound(b) is None
    [f] = [f for f in r.findings if f.title.startswith("create_engine() ran")]
    assert f.title == ("create_engine() ran 7 times at config/database.py:22 in get_db_session and no Engine was "
                       "disposed")
    assert f.severity == "error" and f.fix == FIX_ENGINE_PER_CALL and f.call_site == a.call_site
    assert "gc 7 (gen 1: 7)" in f.evidence and "reference cycle" in f.evidence
    assert [q.engine_site for q in r.quits[:7]] == [a.call_site] * 7


def test_pool_bound_exceeded_by_many_engines(tmp_path):
    s = SynthCapture(str(tmp_path / "b.tq"))
    conns = []
    for i in range(40):
        e = s.engine(0.1 + i * 0.01)
        conns.append(s.open(0.105 + i * 0.01, engine=e))
    s.finish(2.0)
    r = build_report(load(s.path))
    site = r.engines[0]
    assert (site.max_live_connections, site.engines_at_max, site.max_live_engines) == (40, 40, 40)
    [f] = [f for f in r.findings if "one pool allows" in f.title]
    assert f.title == ("connections from config/database.py:22 in get_db_session reached 40 at once, past the 15 "
                       "one pool allows")
    assert "across 40 Engines" in f.evidence and "pool_size 5 + max_overflow 10" in f.evidence
    assert r.connections.never_closed == 40


def test_shared_engine_stays_within_its_pool_and_nothing_is_left_to_gc(tmp_path):
    # Experiment 2: one module-level Engine; overflow connections are closed by the pool on checkin,
    # the rest by dispose() at the end.
    s = SynthCapture(str(tmp_path / "s.tq"))
    engine = s.engine(0.01, site="/srv/app/config/database.py:8 in <module>")
    t = 0.1
    live = []
    for wave in range(20):
        while len(live) < 15:
            live.append(s.open(t, engine=engine, tid=5000 + len(live)))
            t += 0.01
        for c in live[5:]:  # overflow: the pool closes it on checkin
            s.pool(t, engine, "checkin", c)
            s.pool(t + 0.0001, engine, "close", c)
            s.close(t + 0.0002, c, ev.EXPLICIT_CLOSE, tid=5000 + live.index(c))
            t += 0.01
        live = live[:5]
        t += 0.5
    s.dispose(t, engine)
    for c in live:
        s.pool(t + 0.0001, engine, "close", c)
        s.close(t + 0.0002, c, ev.EXPLICIT_CLOSE)
        t += 0.001
    s.finish(t + 0.1)
    r = build_report(load(s.path))
    assert r.connections.max_live == 15 and r.connections.max_live <= 15
    assert r.com_quit.by_cause["gc"] == 0 and r.gc.that_closed_connections == []
    assert r.connections.opened == 5 + 20 * 10 and r.com_quit.by_cause["explicit_close"] == 205
    [site] = r.engines
    assert (site.created, site.disposed, site.max_live_connections, site.engines_at_max) == (1, 1, 15, 1)
    assert not [f for f in r.findings if f.severity in ("error", "warning")]
    assert all(q.closed_by == "pool close" for q in r.quits)


def test_engine_seen_only_through_pool_events_has_an_unknown_site(tmp_path):
    # The Engine was created before the agent loaded (or its engine_create was lost).
    s = SynthCapture(str(tmp_path / "p.tq"))
    a = s.open(0.1)
    s.pool(0.11, 0x1234, "connect", a)
    s.close(0.2, a, ev.REFCOUNT)
    s.finish(1.0)
    r = build_report(load(s.path))
    [site] = r.engines
    assert (site.call_site, site.created, site.connections) == ("an unknown call site", 0, 1)


def test_nullpool_engine_per_call_with_every_connection_closed_is_only_info(tmp_path):
    # The study's experiment 3: create_engine(poolclass=NullPool) per call; checkin closes.
    s = SynthCapture(str(tmp_path / "n.tq"))
    for i in range(30):
        e = s.engine(0.1 + i * 0.1, pool_class="NullPool", pool_size=None, max_overflow=None)
        c = s.open(0.11 + i * 0.1, engine=e, tid=5000 + i % 4)
        s.pool(0.15 + i * 0.1, e, "checkin", c)
        s.pool(0.1501 + i * 0.1, e, "close", c)
        s.close(0.1502 + i * 0.1, c, ev.EXPLICIT_CLOSE, tid=5000 + i % 4)
    s.finish(4.0)
    r = build_report(load(s.path))
    [f] = [f for f in r.findings if f.title.startswith("create_engine() ran")]
    assert f.severity == "info"
    assert f.title == ("create_engine() ran 30 times at config/database.py:22 in get_db_session; every connection "
                       "was closed by close()")
    assert not [f for f in r.findings if f.severity in ("error", "warning")]
    assert r.drops == []
