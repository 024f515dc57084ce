"""Drops and patterns: the study's saw-tooth and sudden drop, found and explained exactly."""

import pytest

from trace_quit.analysis import build_report, load
from trace_quit.analysis.drops import MIN_DROP, find_patterns
from synth import SynthCapture, engine_per_call
from trace_quit.tracer import events as ev

SITE = "config/database.py:22 in get_db_session"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Experiment 1's shape (tests/synth.engine_per_call), 500 connections: the plan and its report."""
    path = str(tmp_path_factory.mktemp("study") / "epc.tq")
    plan = engine_per_call(path)
    return plan, build_report(load(path))


def live_oracle(n=500, spacing=0.12):
    """Live connections just before/after each collection, computed from the plan alone."""
    opens = [0.5 + i * spacing for i in range(n)]
    # An open at the very instant a collection starts is before its first destruction.
    return lambda t, destroyed_before: sum(1 for o in opens if round(o, 9) <= t) - destroyed_before


def test_the_plan_is_the_studys_shape(study):
    plan, _ = study
    assert plan["gen1"] == [33] * 10 and plan["gen0"] == [2] * 4 and plan["gen2"] == 83
    assert plan["shutdown"] == 79 and plan["gen2_at"] == 66.3


def test_causes_and_generations(study):
    _, r = study
    assert r.com_quit.by_cause == {"explicit_close": 0, "refcount": 0, "gc": 421, "shutdown": 79,
                                   "never_closed": 0, "server": 0, "unknown": 0}
    assert r.com_quit.gc_by_generation == {"0": 8, "1": 330, "2": 83}
    assert r.gc.collections == 15 and r.gc.by_generation == {"0": 4, "1": 10, "2": 1}


def test_every_gen1_collection_and_the_gen2_one_and_shutdown_are_drops(study):
    _, r = study
    live = live_oracle()
    # The generation-0 collections destroy 2: below the threshold, not drops.
    assert [(d.cause, d.generation) for d in r.drops] == [("gc", 1)] * 10 + [("gc", 2), ("shutdown", None)]
    assert [d.t_s for d in r.drops[:10]] == pytest.approx([6.5 * k for k in range(1, 11)], abs=0.001)
    destroyed = 0
    gen0_at = (15.05, 30.05, 45.05, 60.05)  # 2 each
    for k, d in enumerate(r.drops[:10], start=1):
        t = 6.5 * k
        before = live(t, destroyed + 2 * sum(1 for g in gen0_at if g < t))
        assert (d.from_, d.to, d.connections) == (before, before - 33, 33)
        destroyed += 33
    big = r.drops[10]
    before = live(66.3, 330 + 8)
    assert (big.t_s, big.from_, big.to, big.connections) == (66.3, before, before - 83, 83)
    assert big.from_ == 162 and big.to == 79
    # Connections i = 6k opened on worker tids 5000 + 6k % 20 (all even); the collection ran on 5003.
    assert big.explanation == ("at 66.3 s a generation-2 collection on thread ThreadPoolExecutor-0_3 "
                               "(10,575 objects) destroyed 83 connections of 83 engines created at " + SITE +
                               ", on a thread that opened none of them")
    assert big.thread == "ThreadPoolExecutor-0_3" and big.collected == 10575 and big.triggered_at == "main.py:33"
    assert big.call_sites == [SITE]
    end = r.drops[11]
    assert (end.from_, end.to) == (79, 0)
    assert end.explanation == "at 81.0 s interpreter shutdown destroyed 79 connections of 79 engines created at " + SITE


def test_periodic_summary(study):
    _, r = study
    [p0, p1] = r.patterns
    assert (p0.generation, p0.collections, p0.every_s, p0.connections_each, p0.total, p0.drops) == (0, 4, 15.0, 2, 8, 0)
    assert (p1.generation, p1.collections, p1.every_s, p1.connections_each, p1.total, p1.drops) == (
        1, 10, 6.5, 33, 330, 10)
    assert p1.regular and p1.text == ("a generation-1 collection every ~6.5 s destroys ~33 connections "
                                      "(10 collections, 33 each, 330 in all): the saw-tooth of the connection count")


def test_summary_names_the_gen2_drop_the_gen1_sawtooth_and_the_call_site(study):
    _, r = study
    text = "\n".join(r.summary)
    assert "The largest drop (162 → 79): at 66.3 s a generation-2 collection" in text
    assert "Periodically, a generation-1 collection every ~6.5 s destroys ~33 connections" in text
    assert "generation-0" not in text  # small, not drops: not in the summary
    # The verdict names the call site and its Engines once (the engines line would repeat it).
    assert r.summary[0] == "ERROR: create_engine() ran 500 times at %s and no Engine was disposed." % SITE
    assert "All 500 connections belonged" not in text


def test_max_live_and_timeline(study):
    _, r = study
    live = live_oracle()
    assert r.connections.max_live == live(58.5, 8 * 33 + 6) == 214
    assert r.connections.max_live_t_s == pytest.approx(0.5 + 0.12 * 483, abs=0.001)  # last open before 58.5 s
    assert max(v for _, v in r.timeline.live) == 214 and r.timeline.live[-1][1] == 0
    assert len(r.timeline.server) == 162 and max(v for _, v in r.timeline.server) <= 214
    assert sum(sum(v) for v in r.timeline.quit_bins.values()) == 500
    assert sum(r.timeline.quit_bins["gc.2"]) == 83 and sum(r.timeline.quit_bins["gc.1"]) == 330
    assert r.timeline.collections["generation"].count(1) == 10


def test_irregular_collections_are_not_called_periodic(tmp_path):
    s = SynthCapture(str(tmp_path / "i.tq"))
    t = 1.0
    for gap in (1.0, 9.0, 2.0, 14.0, 3.0):
        conns = [s.open(t - 0.5 + i * 0.001) for i in range(10)]
        s.collection(t, 1, destroy=conns)
        t += gap
    s.finish(t + 1)
    r = build_report(load(s.path))
    [p] = r.patterns
    assert not p.regular
    assert p.text == ("generation-1 collections destroyed ~10 connections at irregular intervals of "
                      "1.0–14.0 s (5 collections, 10 each, 50 in all)")


def test_steady_open_close_churn_is_not_a_drop(tmp_path):
    s = SynthCapture(str(tmp_path / "c.tq"))
    for i in range(200):  # open and close every 10 ms: always 0 or 1 live
        c = s.open(0.1 + i * 0.01)
        s.close(0.105 + i * 0.01, c, ev.EXPLICIT_CLOSE)
    s.finish(3.0)
    r = build_report(load(s.path))
    assert r.drops == [] and r.connections.max_live == 1


def test_pool_dispose_burst_is_a_drop_explained_by_dispose(tmp_path):
    s = SynthCapture(str(tmp_path / "p.tq"))
    engine = s.engine(0.05, site="/srv/app/db.py:9 in make_engine")
    conns = [s.open(0.1 + i * 0.01, engine=engine) for i in range(10)]
    s.dispose(2.0, engine)
    for i, c in enumerate(conns):
        s.pool(2.0001 + i * 0.001, engine, "close", c)
        s.close(2.0002 + i * 0.001, c, ev.EXPLICIT_CLOSE, tid=s.pid)
    s.finish(3.0)
    r = build_report(load(s.path))
    [d] = r.drops
    assert (d.from_, d.to, d.cause) == (10, 0, "explicit_close")
    assert d.explanation == ("at 2.00 s engine.dispose() on thread MainThread closed 10 connections of "
                             "1 engine created at db.py:9 in make_engine").replace("2.00", "2.0")
    assert r.engines[0].disposed == 1 and not [f for f in r.findings if "create_engine() ran" in f.title]


def test_threshold_is_a_tenth_of_the_live_count_before_but_at_least_min_drop(tmp_path):
    s = SynthCapture(str(tmp_path / "t.tq"))
    conns = [s.open(0.1 + i * 0.001) for i in range(100)]
    s.collection(1.0, 0, destroy=conns[:9])     # 9 < 10 % of 100 live: not a drop
    s.collection(2.0, 0, destroy=conns[9:19])   # 10 >= 10 % of 91: a drop
    s.collection(3.0, 0, destroy=conns[19:21])  # 2 < MIN_DROP
    s.finish(4.0)
    r = build_report(load(s.path))
    assert [(d.t_s, d.connections, d.from_, d.to) for d in r.drops] == [(2.0, 10, 91, 81), (4.0, 79, 79, 0)]
    assert MIN_DROP == 3


def test_find_patterns_needs_three_collections(tmp_path):
    assert find_patterns([], {}) == []


def test_independent_closes_on_different_threads_are_not_a_drop(tmp_path):
    # NullPool checkins: each worker closes its own connection; several land within a few ms.
    s = SynthCapture(str(tmp_path / "n.tq"))
    conns = [s.open(0.1 + i * 0.01, tid=5000 + i) for i in range(12)]
    for i, c in enumerate(conns[:6]):
        s.close(2.0 + i * 0.002, c, ev.EXPLICIT_CLOSE, tid=5000 + i)
    for i, c in enumerate(conns[6:]):  # one thread closing six in a loop: a drop
        s.close(3.0 + i * 0.0001, c, ev.EXPLICIT_CLOSE, tid=6000, thread="janitor")
    s.finish(4.0)
    r = build_report(load(s.path))
    [d] = r.drops
    assert (d.t_s, d.from_, d.to) == (3.0, 6, 0)
    assert d.explanation == "at 3.0 s close() on thread janitor closed 6 connections opened at app.py:40 in connect_db"


def test_exit_teardown_is_not_the_largest_drop(tmp_path):
    s = SynthCapture(str(tmp_path / "x.tq"))
    conns = [s.open(0.1 + i * 0.001) for i in range(50)]
    s.collection(1.0, 2, destroy=conns[:20])
    s.finalize(2.0)
    for i, c in enumerate(conns[20:]):
        s.close(2.001 + i * 0.0001, c, ev.SHUTDOWN)
    s.finish(2.1)
    r = build_report(load(s.path))
    assert [(d.cause, d.fall, d.at_exit) for d in r.drops] == [("gc", 20, False), ("shutdown", 30, True)]
    assert r.largest_drop().cause == "gc"
    assert r.summary[0].startswith("WARNING: ")  # the verdict comes first (issue 16)
    assert r.summary[3].startswith("The largest drop (50 → 30): at 1.0 s a generation-2 collection")
    assert r.summary[4].startswith("At exit (30 → 0): at 2.0 s interpreter shutdown destroyed 30")
