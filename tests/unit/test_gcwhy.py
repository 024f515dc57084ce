"""Why a collection ran then (analysis/gcwhy.py): counters against thresholds, per collector."""

from trace_quit.analysis import gcwhy
from trace_quit.analysis.words.collector import collection_name, thresholds_text

START_313 = {"k": "agent_start", "src": "agent", "pid": 7, "t": 1, "python": "3.13.0", "gc_thresholds": [2000, 10, 10]}


def _gc_start(cid, gen, counts=None, thresholds=None):
    e = {"k": "gc_start", "src": "agent", "pid": 7, "t": 10 + cid, "cid": cid, "gen": gen, "site": "x.py:1"}
    if counts is not None:
        e["counts"] = counts
    if thresholds is not None:
        e["thresholds"] = thresholds
    return e


def test_a_full_collection_due_by_the_thresholds_names_the_quarter_rule_as_inferred():
    th = gcwhy.Thresholds([START_313, _gc_start(4, 1, [2001, 11, 9], [2000, 10, 10]),
                           _gc_start(5, 2, [701, 3, 11], [700, 10, 10])])
    why = th.why_now(7, 5, 2)
    assert why["trigger"] == "thresholds" and why["collector"] == "generational"
    assert why["counts"] == [701, 3, 11] and why["thresholds"] == [700, 10, 10]
    assert "generation 2 (generation-1 collections since its last) 11 > 10" in why["text"]
    assert "long_lived_pending > long_lived_total / 4" in why["text"] and "does not expose" in why["text"]
    # The thresholds changed at run time (the workload's gc.set_threshold): both are reported.
    s = th.summary(7)
    assert s["at_start"] == [2000, 10, 10] and s["in_effect"] == [700, 10, 10] and s["changed_at_run_time"]
    assert thresholds_text(s) == ("thresholds (700, 10, 10) (set by the program; the interpreter started "
                                        "with (2000, 10, 10)), 3.8-3.12's defaults · generational collector")


def test_a_generation_1_collection_with_generation_2_over_says_the_full_one_was_not_due():
    why = gcwhy.explain(1, [705, 11, 12], [700, 10, 10])
    assert why["trigger"] == "thresholds"
    assert "generation 2 was over too, but a full collection was not due (the quarter rule)" in why["text"]
    assert "long_lived_pending" not in why["text"]  # only said for generation 2 itself


def test_counters_under_the_thresholds_mean_an_explicit_collection():
    why = gcwhy.explain(2, [12, 0, 0], [700, 10, 10])
    assert why["trigger"] == "explicit" and "gc.collect(2)" in why["text"]


def test_missing_counters_or_other_collectors_are_said_not_guessed():
    th = gcwhy.Thresholds([START_313, _gc_start(5, 2)])
    why = th.why_now(7, 5, 2)
    assert why["trigger"] == "unknown" and "not recorded" in why["text"] and why["thresholds"] == [2000, 10, 10]
    inc = gcwhy.Thresholds([dict(START_313, python="3.14.2"), _gc_start(5, 1, [3000, 1, 0], [2000, 10, 10])])
    why = inc.why_now(7, 5, 1)
    assert why["collector"] == "incremental" and why["trigger"] == "unknown" and "3.14.0-3.14.4" in why["text"]
    ft = gcwhy.Thresholds([START_313, _gc_start(5, 0, [2001, 0, 0], [2000, 10, 10])],
                          header={"targets": {"gc_collector": "free-threaded"}})
    why = ft.why_now(7, 5, 0)
    assert why["collector"] == "free-threaded" and "says nothing about the objects' age" in why["text"]
    assert gcwhy.explain(None, None, None)["trigger"] == "unknown"


def test_collectors_by_version():
    assert gcwhy.collector("3.10.13") == gcwhy.collector("3.13.5") == gcwhy.collector("3.14.5") == "generational"
    assert gcwhy.collector("3.14.0") == gcwhy.collector("3.14.4") == "incremental"
    assert gcwhy.collector("3.15.2") == gcwhy.collector("3.16.0", thresholds=[2000, 10, 10], generations=3) \
        == "generational"
    assert gcwhy.collector("3.16.0") == gcwhy.collector(None) == "unknown"
    assert gcwhy.collector("3.13.5", free_threaded=True) == "free-threaded"


def test_without_the_agent_there_are_no_thresholds():
    assert gcwhy.Thresholds([]).summary(7) is None


def test_a_deferred_collection_on_3_12_and_later_is_still_due_by_the_thresholds():
    # 3.12+ schedule the collection when generation 0 passes its threshold and run it at the next
    # evaluation-loop check: generation 0 may be back under it by then (seen on Debian 13's 3.13).
    why = gcwhy.explain(2, [689, 0, 11], [700, 10, 10], python="3.13.5")
    assert why["trigger"] == "thresholds" and "back to 689" in why["text"] and "long_lived_pending" in why["text"]
    # Up to 3.11 the allocation that passed the threshold collects at once: not due means explicit.
    assert gcwhy.explain(2, [689, 0, 11], [700, 10, 10], python="3.11.2")["trigger"] == "explicit"
    # Nothing over its own threshold is explicit on every version; generation 0 is never deferred-due.
    assert gcwhy.explain(2, [689, 0, 3], [700, 10, 10], python="3.13.5")["trigger"] == "explicit"
    assert gcwhy.explain(0, [689, 0, 0], [700, 10, 10], python="3.13.5")["trigger"] == "explicit"


def test_an_incremental_collector_is_spoken_of_in_its_own_terms():
    # 3.14.0-3.14.4: automatic collections report 0 (young) or 1 (young + an old-generation
    # increment); 2 only comes from gc.collect(). None of them is "generation 2".
    assert collection_name(1, "incremental") == "old-generation increment"
    assert collection_name(0, "incremental") == "young collection"
    assert collection_name(2, "incremental") == "full collection"
    assert collection_name(2) == "generation-2 collection"
    start = dict(START_313, python="3.14.2", gc_thresholds=[2000, 10, 0], gc_generations=3)
    kernel = {"targets": {"gc_collector": "incremental", "notes": [
        "kernel layer: CPython 3.14.2 collects incrementally (3.14.0-3.14.4): ... without a generation"]}}
    th = gcwhy.Thresholds([start, _gc_start(5, 1, [3000, 1, 0], [2000, 10, 0])], header=kernel)
    assert th.collector(7) == "incremental"
    why = th.why_now(7, 5, 1)
    assert why["text"].startswith("an old-generation increment: ")
    assert "generation 2" not in why["text"]
    caveats = th.caveats(7)
    assert caveats[0].startswith("kernel layer: ") and caveats[1].startswith("agent layer: ")
    assert "young collection plus an increment of the old generation" in caveats[1]


def test_the_collector_comes_from_what_the_interpreter_reported_at_start():
    # 3.15 reports three generations and (2000, 10, 10): generational, its rule applies.
    start = dict(START_313, python="3.15.2", gc_thresholds=[2000, 10, 10], gc_generations=3)
    th = gcwhy.Thresholds([start, _gc_start(5, 2, [2001, 3, 11], [2000, 10, 10])])
    assert th.collector(7) == "generational" and th.caveats(7) == []
    assert th.why_now(7, 5, 2)["trigger"] == "thresholds"
    odd = dict(START_313, python="3.16.0", gc_thresholds=[2000, 10, 0], gc_generations=2)
    th = gcwhy.Thresholds([odd])
    assert th.collector(7) == "unknown" and th.caveats(7)[0].startswith("agent layer: CPython 3.16.0")


def test_the_text_report_prints_each_caveat_with_its_layer(tmp_path):
    from synth import known_causes

    from trace_quit.analysis import build_report, load, render
    r = build_report(load(known_causes(str(tmp_path / "kc.tq"))))
    assert r.gc_collector == {"collector": "generational", "caveats": []}
    r.gc_collector = {"collector": "incremental", "caveats": ["kernel layer: collections are attributed (cause gc) "
                                                              "without a generation"]}
    text = render(r, "text")
    assert "caveat, kernel layer: collections are attributed (cause gc) without a generation" in " ".join(text.split())


def test_a_report_on_an_incremental_collector_never_says_generation_2_for_an_increment(tmp_path):
    from synth import SynthCapture

    from trace_quit.analysis import build_report, load, render
    from trace_quit.tracer import events as ev

    class Synth3142(SynthCapture):
        @staticmethod
        def _agent_start(t, pid, parent):
            e = SynthCapture._agent_start(t, pid, parent)
            e.update(python="3.14.2", gc_thresholds=[2000, 10, 0])
            return e

    s = Synth3142(str(tmp_path / "inc.tq"))
    for i in range(6):  # six connections freed by one automatic collection (reported as 1)
        s.close(0.5, s.open(0.1 + i / 100), ev.GC, gen=1, cid=1)
    s.finish(1.0)
    r = build_report(load(s.path))
    assert r.gc_collector["collector"] == "incremental"
    assert any("agent layer: CPython 3.14.2 collects incrementally" in c for c in r.gc_collector["caveats"])
    assert any("old-generation increments: 6" in line for line in r.summary), r.summary
    text = " ".join(render(r, "text").split())
    assert "generation-1 collection" not in text and "generation 1:" not in text
    assert "caveat, agent layer" in text
