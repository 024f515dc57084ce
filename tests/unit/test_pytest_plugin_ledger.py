"""The pytest plugin's Ledger on hand-written agent events (no server, no agent)."""

import pytest

from trace_quit.tracer import pytest_plugin as pp


def ev(k, t, **fields):
    return dict(k=k, t=t, pid=1, src="agent", **fields)


def test_a_connection_belongs_to_the_test_that_opened_it_even_when_collected_later():
    ledger = pp.Ledger()
    ledger.begin("t.py::a", 10)
    ledger.feed([ev("engine_create", 11, engine=7, site="t.py:3 in make", url="mysql://u:***@h/d",
                    pool_class="QueuePool"),
                 ev("conn_open", 12, conn=100, stack=[]), ev("pool", 13, ev="connect", conn=100, engine=7)])
    ledger.end(20)
    ledger.begin("t.py::b", 30)
    ledger.feed([ev("conn_destroy", 31, conn=100, cause="gc", gen=2, cid=1),
                 ev("conn_open", 32, conn=200, stack=["/app/t.py:9 in test_b"]), ev("conn_close", 33, conn=200)])
    ledger.end(40)
    ledger.close_open()
    results = ledger.results()
    a = results["t.py::a"]
    assert a["opened"] == 1 and a["causes"] == {"gc": 1} and a["gc_by_gen"] == {"2": 1}
    assert a["leaks"] == [{"cause": "gc", "gen": 2, "ended_in": "t.py::b", "engine_site": "t.py:3 in make",
                           "engine_url": "mysql://u:***@h/d", "pool_class": "QueuePool", "opened_at": None}]
    assert a["engines_not_disposed"] == [{"site": "t.py:3 in make", "url": "mysql://u:***@h/d",
                                          "pool_class": "QueuePool"}]
    assert results["t.py::b"] == {"opened": 1, "causes": {"explicit_close": 1}, "gc_by_gen": {}, "leaks": [],
                                  "engines_not_disposed": []}


def test_still_open_at_the_end_and_outside_tests():
    ledger = pp.Ledger()
    ledger.feed([ev("conn_open", 5, conn=1, stack=["/app/conftest.py:4 in <module>"])])
    ledger.begin("t.py::a", 10)
    ledger.feed([ev("conn_open", 12, conn=2, stack=[]), ev("engine_create", 13, engine=9, site="s"),
                 ev("engine_dispose", 14, engine=9)])
    ledger.end(20)
    ledger.close_open()
    results = ledger.results()
    assert results[pp.OUTSIDE]["causes"] == {"open_at_end": 1}
    assert results[pp.OUTSIDE]["leaks"][0]["opened_at"] == "/app/conftest.py:4 in <module>"
    assert results["t.py::a"]["causes"] == {"open_at_end": 1}
    assert results["t.py::a"]["engines_not_disposed"] == []
    assert pp.summary_lines(results)[-1] == ("2 connection(s) opened; explicit_close 0, refcount 0, gc 0, "
                                             "unknown 0, open_at_end 2; 2 test(s) with leaks")


def test_events_before_the_plugin_and_address_reuse():
    ledger = pp.Ledger()
    ledger.begin("t.py::a", 10)
    ledger.feed([ev("conn_close", 11, conn=1),  # opened before the plugin: not ours to count
                 ev("conn_open", 12, conn=1, stack=[]), ev("conn_destroy", 13, conn=1, cause="refcount"),
                 ev("conn_open", 14, conn=1, stack=[]), ev("conn_destroy", 15, conn=1, cause="shutdown"),
                 ev("conn_open", 16, conn=1, stack=[]), ev("conn_destroy", 17, conn=1, cause="bogus")])
    ledger.close_open()
    assert ledger.results()["t.py::a"]["causes"] == {"refcount": 1, "open_at_end": 1, "unknown": 1}


def test_fail_causes():
    assert pp._fail_causes("gc,shutdown") == {"gc", "open_at_end"}
    assert pp._fail_causes(" never_closed ") == {"open_at_end"}
    assert pp._fail_causes("") == frozenset()
    with pytest.raises(pytest.UsageError, match="unknown cause 'gcc': choose from gc, shutdown"):
        pp._fail_causes("gcc")


def test_merge_results_adds_what_two_workers_saw_outside_tests():
    one = {pp.OUTSIDE: {"opened": 1, "causes": {"gc": 1}, "gc_by_gen": {"0": 1}, "leaks": [{"cause": "gc"}],
                        "engines_not_disposed": []}}
    two = {pp.OUTSIDE: {"opened": 2, "causes": {"gc": 2}, "gc_by_gen": {"0": 2}, "leaks": [{"cause": "gc"}] * 2,
                        "engines_not_disposed": []},
           "t.py::a": {"opened": 0, "causes": {}, "gc_by_gen": {}, "leaks": [], "engines_not_disposed": []}}
    merged = pp.merge_results([one, two])
    assert merged[pp.OUTSIDE]["opened"] == 3 and merged[pp.OUTSIDE]["gc_by_gen"] == {"0": 3}
    assert len(merged[pp.OUTSIDE]["leaks"]) == 3 and "t.py::a" in merged
    assert one[pp.OUTSIDE]["opened"] == 1  # the parts are not modified


def test_engines_of_other_dialects_are_counted_never_blamed():
    ledger = pp.Ledger()
    ledger.begin("t.py::a", 10)
    ledger.feed([ev("engine_create", 11, engine=1, site="t.py:3", url="sqlite://", pool_class="SingletonThreadPool"),
                 ev("engine_create", 12, engine=2, site="t.py:4", url="postgresql+psycopg2://", pool_class="QueuePool"),
                 ev("engine_create", 13, engine=3, site="t.py:5", url="mariadb+mysqldb://u:***@h/d",
                    pool_class="QueuePool"),
                 ev("engine_create", 14, engine=4, site="t.py:6", url="mysql+mysqldb://", pool_class="QueuePool"),
                 ev("conn_open", 15, conn=9, stack=[]), ev("pool", 16, ev="connect", conn=9, engine=3),
                 ev("conn_close", 17, conn=9)])
    ledger.end(20)
    results = ledger.results()
    # Engine 4 (MySQL, a mocked DBAPI: it never held a connection) leaks nothing either.
    assert [e["url"] for e in results["t.py::a"]["engines_not_disposed"]] == ["mariadb+mysqldb://u:***@h/d"]
    assert pp.summary_lines(results, ledger.other_engines)[-1] == (
        "Engines of other dialects, not traced: postgresql 1, sqlite 1")


def test_late_leaks_count_the_open_ones_only_when_open_at_end_is_asked():
    ledger = pp.Ledger()
    ledger.begin("t.py::a", 10)
    ledger.feed([ev("conn_open", 11, conn=1, stack=[]), ev("conn_open", 12, conn=2, stack=[]),
                 ev("conn_destroy", 13, conn=1, cause="gc", gen=0, cid=1)])
    ledger.end(20)
    reported = set()
    assert [(n, r["cause"]) for n, r in ledger.late_leaks({"gc"}, reported)] == [("t.py::a", "gc")]
    assert [(n, r["cause"]) for n, r in ledger.late_leaks({"gc", "open_at_end"}, reported)] == [
        ("t.py::a", "gc"), ("t.py::a", None)]
    assert len(ledger.open_records("t.py::a")) == 1 and ledger.open_records("t.py::b") == []


def test_a_source_checkout_of_a_library_is_a_library():
    from trace_quit.analysis.sites import is_library_frame

    assert pp.leak_detail({"cause": "gc", "stack": [
        "lib/sqlalchemy/engine/default.py:642 in connect",
        "/venv/lib/python3.11/site-packages/_pytest/python.py:1 in x",
        "test/engine/test_pool.py:9 in test_it"]})["opened_at"] == "test/engine/test_pool.py:9 in test_it"
    assert is_library_frame("/src/pluggy/src/pluggy/_callers.py:1 in _multicall")
    assert not is_library_frame("/home/u/project/app.py:3 in main")


def test_connections_per_test_in_the_report():
    from types import SimpleNamespace

    from trace_quit.analysis import tests_view

    def test(t, nodeid, phase, pid=1):
        return {"k": "test", "t": t, "src": "tracer", "pid": pid, "nodeid": nodeid, "phase": phase}

    events = [test(10, "t.py::a", "setup"), test(11, "t.py::a", "call"), test(20, "t.py::a", "finish"),
              test(30, "", "sessionfinish"), test(40, "", "exit"), test(10, "t.py::b", "setup", pid=2)]
    lives = [SimpleNamespace(pid=1, t_open=12, cause="gc"), SimpleNamespace(pid=1, t_open=13, cause="explicit_close"),
             SimpleNamespace(pid=1, t_open=25, cause="explicit_close"), SimpleNamespace(pid=1, t_open=41, cause=None),
             SimpleNamespace(pid=2, t_open=12, cause="never_closed"), SimpleNamespace(pid=1, t_open=None, cause="gc")]
    rows = tests_view.by_test(events, lives)
    assert [(r["nodeid"], r["connections"], r["by_cause"]) for r in rows] == [
        ("t.py::a", 2, {"explicit_close": 1, "gc": 1}), ("t.py::b", 1, {"never_closed": 1}),
        ("<outside any test>", 1, {"explicit_close": 1}), ("<exit handlers>", 1, {"open": 1})]
    assert [tests_view.leaks(r) for r in rows] == [1, 1, 0, 0]
    assert tests_view.by_test([], lives) == []


def test_a_test_record_is_validated():
    from trace_quit.tracer import events

    record = {"k": "test", "t": 1, "src": "tracer", "pid": 1, "nodeid": "t.py::a", "phase": "call"}
    assert events.check(record) is record
    with pytest.raises(events.SchemaError, match="phase is 'lunch'"):
        events.check(dict(record, phase="lunch"))
    with pytest.raises(events.SchemaError):
        events.check(dict(record, src="agent"))  # through the agent's channel: forged
