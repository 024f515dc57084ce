"""Real captures (recorded here with both layers and the sampler, passwords scrubbed) as fixtures.

tests/unit/data/*.tqcap.gz were recorded with `trace-quit demo` / `trace-quit run` on a
disposable MariaDB 10.11, Python 3.11, mysqlclient 2.3.1, SQLAlchemy 2.1.9:

- known-causes.tqcap: workloads/known_causes.py (7 / 11 / 5 + 13 / 3);
- engine-per-call.tqcap: the study's experiment 1 at full size (500 tasks, 20 workers);
- shared-engine.tqcap: experiment 2;
- known-causes-tcp.tqcap: known-causes over TCP, recorded with the eBPF layer's server-side
  keys (bpf_close.sock/last_errno/eof, bpf_close_ret.send_err/tcp_from, bpf_peer_end);
- server-and-fork.tqcap: a plain MySQLdb program and two SQLAlchemy Engines on a disposable
  server: a connection KILLed then queried (2013), one KILLed while idle then closed, one past
  a 1 s wait_timeout then queried (2006), a pooled one KILLed then checked out with
  pool_pre_ping (invalidated), a pooled one KILLed then queried (2013, invalidated); then a
  fork whose child closes an inherited connection the parent then queries (2013), and a fork
  whose child exits through interpreter shutdown with the parent's connections inherited;
- server-stop.tqcap: the server stopped under a program holding an idle connection, a used
  one (queried after: 2013) and a pool with pool_pre_ping;
- known-causes-pymysql.tqcap and known-causes-bounded.tqcap: recorded by tests/make_fixtures.py
  (known-causes-pymysql; known-causes with --max-capture 64K reached mid-run), Python 3.11,
  PyMySQL 1.2.4 (pymysql.__version__ says 2.2.8), SQLAlchemy 2.1.9, both layers, capture revision 2;
- tls.tqcap and attach.tqcap: recorded by tests/make_fixtures.py (mysqlclient over TLS; ``--pid`` on
  tests/system/attach_service.py), Python 3.11, MySQLdb 2.3.2, SQLAlchemy 2.1.9, MariaDB 10.11.
"""

import dataclasses
import os

import pytest

from trace_quit.analysis import build_report, render
from trace_quit.analysis.findings import FIX_ENGINE_PER_CALL
from tq_support import load_fixture

DATA = os.path.join(os.path.dirname(__file__), "data")


capture = load_fixture


def only(cap, src):
    """The same capture as if only one layer had recorded it."""
    events = [e for e in cap.events if e.src in (src, "tracer", "sampler")
              and e.k != ("bpf_probes" if src == "agent" else "")]
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


@pytest.mark.parametrize("layer", [None, "agent", "bpf"], ids=["both", "agent-only", "bpf-only"])
def test_real_known_causes_over_tcp_close_wait_is_no_server_evidence(tmp_path, layer):
    # On loopback the server's FIN often beats the client's close() after a COM_QUIT:
    # that TCP state says nothing about who ended the connection first.
    cap = capture(tmp_path, "known-causes-tcp.tqcap")
    assert sum(1 for e in cap.events if e.k == "bpf_close_ret" and e.tcp_from == "close_wait") == 13
    r = build_report(only(cap, layer) if layer else cap)
    assert r.com_quit.by_cause == {"explicit_close": 7, "refcount": 11, "gc": 18, "shutdown": 3,
                                   "never_closed": 0, "server": 0, "unknown": 0}
    assert r.com_quit.gc_by_generation == {"0": 5, "1": 0, "2": 13}


def test_real_server_ended_and_fork_shared_connections(tmp_path):
    cap = capture(tmp_path, "server-and-fork.tqcap")
    r = build_report(cap)
    c = r.connections
    assert c.opened == 9 and c.forked == 3 and c.fork_copies == 3 and c.opened_before_capture == 0
    assert r.com_quit.by_cause == {"explicit_close": 4, "refcount": 0, "gc": 0, "shutdown": 1, "never_closed": 0,
                                   "server": 4, "unknown": 0}
    assert r.com_quit.wire == {"confirmed": 5, "not_sent": 4, "encrypted": 0, "unobserved": 0}
    server = [q for q in r.quits if q.cause == "server" and q.counted]
    assert len(server) == 4 and all(q.wire == "not_sent" for q in server)
    assert all(q.evidence[-3:] == ["kernel_socket_dropped", "kernel_not_sent", "kernel_eof"] for q in server)
    # Only the query after a KILL gave the pool an error to record (pre_ping invalidates with
    # a bare InvalidatePoolError): the kernel carries the rest.
    assert [q.evidence[0] for q in server].count("agent_error") == 1
    assert "after error 2006" in server[1].reason and "ECONNRESET on a write" in server[1].reason
    # KILLed while idle and closed unused: its COM_QUIT went out; nothing before it showed the end.
    assert r.quits[1].cause == "explicit_close" and r.quits[1].wire == "confirmed"
    copies = [q for q in r.quits if not q.counted]
    assert len(copies) == 3 and sorted(q.counted_pid for q in copies) == sorted([11617, 11619, 11507])
    counted_children = [q for q in r.quits if q.counted and q.inherited_from == 11507]
    assert [(q.pid, q.cause) for q in counted_children] == [(11617, "explicit_close"), (11619, "shutdown")]
    titles = [f.title for f in r.findings]
    assert "4 connections were ended by the server first (KILL, wait_timeout, restart)" in titles
    assert "3 connections were shared by forked processes and ended in more than one" in titles
    shutdown = next(f for f in r.findings if "interpreter shutdown" in f.title)
    assert "prog.py:8 in connect" in shutdown.evidence   # a fork copy's open site is its parent's


def test_real_server_and_fork_from_one_layer(tmp_path):
    cap = capture(tmp_path, "server-and-fork.tqcap")
    bpf = build_report(only(cap, "bpf"))
    assert bpf.com_quit.by_cause["server"] == 4 and bpf.connections.fork_copies == 3
    agent = build_report(only(cap, "agent"))
    # Without the kernel only the pool's 2013 is evidence; forks come from agent_start.
    assert agent.com_quit.by_cause["server"] == 1 and agent.com_quit.by_cause["explicit_close"] == 7
    assert agent.connections.opened == 9 and agent.connections.opened_before_capture == 0
    assert agent.connections.forked == 3 and agent.connections.fork_copies == 3


def test_real_server_stopped(tmp_path):
    cap = capture(tmp_path, "server-stop.tqcap")
    r = build_report(cap)
    assert r.com_quit.by_cause["server"] == 2 and r.com_quit.by_cause["explicit_close"] == 1
    assert [q.wire for q in r.quits if q.cause == "server"] == ["not_sent", "not_sent"]
    # The idle one, closed unused after the stop, still sent its COM_QUIT: not distinguishable yet.
    assert [q.wire for q in r.quits if q.cause == "explicit_close"] == ["confirmed"]


#: known-causes with its atexit rows (tests/tq_support.KNOWN_CAUSES): 44 ends.
KNOWN_CAUSES_44 = {"explicit_close": 7, "refcount": 13, "gc": 21, "shutdown": 3, "never_closed": 0, "server": 0,
                   "unknown": 0}


@pytest.mark.parametrize("layer", [None, "agent", "bpf"], ids=["both", "agent-only", "bpf-only"])
def test_real_pymysql_known_causes_exact_and_only_close_sends_com_quit(tmp_path, layer):
    # Recorded by tests/make_fixtures.py: known-causes-pymysql under both layers, Unix socket.
    cap = capture(tmp_path, "known-causes-pymysql.tqcap")
    r = build_report(only(cap, layer) if layer else cap)
    if layer == "bpf":  # the kernel alone sees 7 COM_QUITs but no close() call: by whom is unknown
        assert r.com_quit.by_cause == dict(KNOWN_CAUSES_44, explicit_close=0, unknown=7)
    else:
        assert r.com_quit.by_cause == KNOWN_CAUSES_44
    assert r.com_quit.gc_by_generation == {"0": 5, "1": 0, "2": 16}
    assert r.connections.opened == 44
    if layer != "agent":  # the kernel's socket probes saw which sockets carried a COM_QUIT
        assert r.com_quit.wire["confirmed"] == 7 and r.com_quit.wire["not_sent"] == 37
    assert r.no_quit.without_quit == 37


def test_real_bounded_capture_counts_every_end_by_cause(tmp_path):
    # Recorded by tests/make_fixtures.py: known-causes with --max-capture 64K reached mid-run.
    r = build_report(capture(tmp_path, "known-causes-bounded.tqcap"))
    assert r.com_quit.by_cause == KNOWN_CAUSES_44
    assert r.com_quit.gc_by_generation == {"0": 5, "1": 0, "2": 16}
    assert r.com_quit.wire["confirmed"] == 44
    assert r.bound is not None and r.bound["closes_after_from"] == "kernel"
    assert sum(r.bound["closes_after"].values()) == 21 and r.connections.opened == 44
    assert r.connections.never_closed == 0


@pytest.mark.parametrize("layer", [None, "agent", "bpf"], ids=["both", "agent-only", "bpf-only"])
def test_real_tls_capture_every_cause_and_every_com_quit_encrypted(tmp_path, layer):
    # Recorded by tests/make_fixtures.py: mysqlclient over TLS, 2 close() / 2 refcount / 2 gc / 1 shutdown.
    r = build_report(only(capture(tmp_path, "tls.tqcap"), layer) if layer else capture(tmp_path, "tls.tqcap"))
    assert r.com_quit.by_cause == {"explicit_close": 2, "refcount": 2, "gc": 2, "shutdown": 1, "never_closed": 0,
                                   "server": 0, "unknown": 0}
    assert r.connections.opened == 7
    if layer != "agent":  # encrypted bytes: the kernel saw the close's send, never a COM_QUIT it could read
        assert r.com_quit.wire == {"confirmed": 0, "not_sent": 0, "encrypted": 7, "unobserved": 0}
        assert r.com_quit.gc_by_generation == {"0": 0, "1": 0, "2": 2}


def test_real_attach_capture_blames_the_leaking_line_and_leaves_the_pool_open(tmp_path):
    # Recorded by tests/make_fixtures.py: trace-quit --pid on tests/system/attach_service.py, 3 /leak.
    r = build_report(capture(tmp_path, "attach.tqcap"))
    assert r.com_quit.by_cause == {"explicit_close": 0, "refcount": 0, "gc": 3, "shutdown": 0, "never_closed": 0,
                                   "server": 0, "unknown": 0}
    assert r.com_quit.wire["confirmed"] == 3
    # The shared pool's connection was opened before the attach and was still open at detach.
    assert r.connections.opened == 4 and r.connections.open_at_end == 1 and r.connections.never_closed == 0
    sites = {e.call_site.rsplit("/", 1)[-1]: (e.created, e.connections_by_cause) for e in r.engines}
    assert sites == {"attach_service.py:65 in leaky_query": (3, {"gc": 3}), "before attach": (1, {})}
