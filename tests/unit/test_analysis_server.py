"""The `server` cause: the server ended the connection before the client's COM_QUIT.

Evidence from the kernel (mysql_close sent nothing after a successful connect; the COM_QUIT
send failed with EPIPE/ECONNRESET; an EOF seen first) or from the agent (the pool invalidated
the connection with a server-gone error), each named in the COM_QUIT's evidence.
"""

import json

import pytest

from trace_quit.analysis import build_report, load, render
from trace_quit.analysis.join import server_gone_code
from synth import SynthCapture
from trace_quit.tracer import events as ev

TITLE = "connections were ended by the server first (KILL, wait_timeout, restart)"
LOST_2013 = "OperationalError: (2013, 'Lost connection to server during query')"


def report_of(path):
    return build_report(load(str(path)))


def server_finding(r):
    found = [f for f in r.findings if "ended by the server first" in f.title]
    assert len(found) == 1, [f.title for f in r.findings]
    return found[0]


def test_kernel_alone_nothing_sent_after_a_successful_connect_is_server(tmp_path):
    s = SynthCapture(str(tmp_path / "k.tq"), layers=("bpf",))
    a, b = s.open(0.1), s.open(0.2)
    s.close(1.0, a, ev.EXPLICIT_CLOSE, send=False)
    s.close(1.1, b, ev.EXPLICIT_CLOSE)
    s.finish(2.0)
    r = report_of(s.path)
    assert r.com_quit.by_cause["server"] == 1 and r.com_quit.by_cause["explicit_close"] == 1
    assert r.connections.server == 1 and r.connections.com_quit == 1 and r.connections.opened == 2
    q = r.quits[0]
    assert q.cause == "server" and q.wire == "not_sent" and q.evidence == ["kernel_not_sent"]
    assert "sent no COM_QUIT" in q.reason and "explicit_close" in q.reason
    assert r.com_quit.wire == {"confirmed": 1, "not_sent": 1, "encrypted": 0, "unobserved": 0}
    f = server_finding(r)
    assert f.severity == "warning"
    assert f.title == "1 connection was ended by the server first (KILL, wait_timeout, restart)"
    assert "mysql_close sent no COM_QUIT on a connection that had opened: 1" in f.evidence
    assert "pool_recycle below the server's wait_timeout" in f.fix and "pool_pre_ping=True" in f.fix
    assert "2006/2013" in f.fix
    # Not also reported as an unexplained silent close.
    assert not any("sent no COM_QUIT on the socket" in f.title for f in r.findings)


def test_plain_mysqldb_program_kernel_evidence_counts_without_pool_events(tmp_path):
    # Both layers, no SQLAlchemy: the agent saw an explicit close() and nothing else.
    s = SynthCapture(str(tmp_path / "p.tq"))
    conns = [s.open(0.1 + i * 0.01) for i in range(3)]
    for i, c in enumerate(conns):
        s.close(1.0 + i * 0.1, c, [ev.EXPLICIT_CLOSE, ev.REFCOUNT, ev.SHUTDOWN][i], send=False)
    s.finish(2.0)
    r = report_of(s.path)
    assert r.com_quit.by_cause["server"] == 3 and r.connections.com_quit == 0
    assert [q.evidence for q in r.quits] == [["kernel_not_sent"]] * 3
    assert [q.reason.rsplit(" ", 1)[-1] for q in r.quits] == ["explicit_close", "refcount", "shutdown"]
    assert server_finding(r).count == 3


def test_agent_alone_pool_invalidate_with_a_server_gone_error_is_server(tmp_path):
    s = SynthCapture(str(tmp_path / "a.tq"), layers=("agent",))
    engine = s.engine(0.05)
    a = s.open(0.1, engine=engine)
    s.pool(5.0, engine, "invalidate", a, error="OperationalError: (2006, 'Server has gone away')")
    s.close(5.001, a, ev.EXPLICIT_CLOSE)
    s.finish(6.0)
    r = report_of(s.path)
    [q] = r.quits
    assert q.cause == "server" and q.wire == "unobserved" and q.evidence == ["agent_error"]
    assert "2006" in q.reason and q.closed_by == "pool invalidate"
    f = server_finding(r)
    assert "the pool invalidated it with a server-gone error (2006 server has gone away × 1): 1" in f.evidence


def test_both_layers_agree(tmp_path):
    s = SynthCapture(str(tmp_path / "b.tq"))
    engine = s.engine(0.05)
    a = s.open(0.1, engine=engine)
    s.pool(5.0, engine, "invalidate", a, error=LOST_2013)
    s.close(5.001, a, ev.EXPLICIT_CLOSE, send=False)
    s.finish(6.0)
    r = report_of(s.path)
    [q] = r.quits
    assert q.cause == "server" and q.evidence == ["agent_error", "kernel_not_sent"] and q.wire == "not_sent"
    f = server_finding(r)
    assert "Both layers agree on 1 of them" in f.evidence
    doc = json.loads(render(r, "json"))
    assert doc["quits"][0]["evidence"] == ["agent_error", "kernel_not_sent"]
    assert doc["com_quit"]["by_cause"]["server"] == 1 and doc["connections"]["server"] == 1


def test_server_sent_error_with_a_confirmed_com_quit_agrees(tmp_path):
    # 4031 (wait_timeout) / 1927 (KILL) / 1053 (shutdown) arrive in an error packet: the library
    # keeps its socket and its COM_QUIT still goes out, into a closed connection.
    s = SynthCapture(str(tmp_path / "t.tq"))
    engine = s.engine(0.05)
    errors = ["OperationalError: (4031, 'The client was disconnected by the server because of inactivity.')",
              "OperationalError: (MySQLdb.OperationalError) (1927, 'Connection was killed')",
              "OperationalError: (1053, 'Server shutdown in progress')"]
    conns = [s.open(0.1 + i * 0.01, engine=engine) for i in range(3)]
    for i, (c, err) in enumerate(zip(conns, errors)):
        s.pool(5.0 + i, engine, "invalidate", c, error=err)
        s.close(5.001 + i, c, ev.EXPLICIT_CLOSE)
    s.finish(9.0)
    r = report_of(s.path)
    assert [q.cause for q in r.quits] == ["server"] * 3
    assert [q.wire for q in r.quits] == ["confirmed"] * 3
    assert all(q.evidence == ["agent_error"] for q in r.quits)
    assert all("went into the closed connection" in q.reason for q in r.quits)
    f = server_finding(r)
    for code in ("4031", "1927", "1053"):
        assert code in f.evidence


def test_client_detected_error_but_com_quit_sent_is_a_disagreement(tmp_path):
    # After 2013 the library has dropped the socket: a COM_QUIT on the wire contradicts it.
    s = SynthCapture(str(tmp_path / "x.tq"))
    engine = s.engine(0.05)
    a = s.open(0.1, engine=engine)
    s.pool(5.0, engine, "invalidate", a, error=LOST_2013)
    s.close(5.001, a, ev.EXPLICIT_CLOSE)  # wire confirmed
    s.finish(6.0)
    r = report_of(s.path)
    [q] = r.quits
    assert q.cause == "unknown" and q.wire == "confirmed" and q.evidence is None
    assert "disagree" in q.reason and "2013" in q.reason and "send COM_QUIT" in q.reason
    assert r.com_quit.by_cause["server"] == 0 and r.com_quit.by_cause["unknown"] == 1
    assert any(f.title == "1 COM_QUIT could not be attributed" for f in r.findings)


def test_client_causes_disagree_but_the_server_ended_it_first(tmp_path):
    # The later close's cause is disputed; that the server ended the connection first is not.
    s = SynthCapture(str(tmp_path / "y.tq"))
    a = s.open(0.1)
    s.close(1.0, a, ev.REFCOUNT, bpf_cause=ev.EXPLICIT_CLOSE, send=False)
    s.finish(2.0)
    [q] = report_of(s.path).quits
    assert q.cause == "server" and q.evidence == ["kernel_not_sent"]
    assert ("not attributed (the layers disagree: the agent said refcount, the eBPF layer said explicit_close)"
            in q.reason)


@pytest.mark.parametrize("ret,name", [(-32, "EPIPE"), (-104, "ECONNRESET")])
def test_kernel_com_quit_send_failed_is_server(tmp_path, ret, name):
    s = SynthCapture(str(tmp_path / "f.tq"), layers=("bpf",))
    a, b = s.open(0.1), s.open(0.2)
    s.close(1.0, a, ev.EXPLICIT_CLOSE, send_ret=ret)
    s.close(1.1, b, ev.EXPLICIT_CLOSE, send_ret=-11)  # EAGAIN: not a peer that went away
    s.finish(2.0)
    r = report_of(s.path)
    qa, qb = r.quits
    # A failed COM_QUIT is not confirmed: the kernel says not_sent, the evidence is the failure.
    assert qa.cause == "server" and qa.evidence == ["kernel_send_failed"] and qa.wire == "not_sent"
    assert name in qa.reason
    assert qb.cause == "explicit_close" and qb.evidence is None and qb.wire == "not_sent"
    assert "the COM_QUIT send failed (EPIPE/ECONNRESET): 1" in server_finding(r).evidence


def test_kernel_eof_before_the_close_is_server(tmp_path):
    s = SynthCapture(str(tmp_path / "e.tq"))
    a, b, c = s.open(0.1), s.open(0.2), s.open(0.3)
    s.close(1.0, a, ev.GC, gen=2, cid=4, eof=True)          # bpf_close.eof only
    s.peer_end(1.5, b)                                       # the EOF itself, read() returned 0
    s.close(2.0, b, ev.EXPLICIT_CLOSE, eof=True, send=False, sock=False, last_errno=2013)
    s.close(2.5, c, ev.EXPLICIT_CLOSE)
    s.peer_end(2.6, c)                                       # after the close: not evidence
    s.finish(3.0)
    qa, qb, qc = report_of(s.path).quits
    assert qa.cause == "server" and qa.evidence == ["kernel_eof"] and qa.generation is None
    assert "gc (generation 2)" in qa.reason
    assert qb.cause == "server"
    assert qb.evidence == ["kernel_socket_dropped", "kernel_not_sent", "kernel_eof"]
    assert "dropped its socket after error 2013" in qb.reason and "EOF on a read" in qb.reason
    assert qc.cause == "explicit_close" and qc.evidence is None


def test_kernel_socket_dropped_counts_without_the_send_probes(tmp_path):
    # bpf_close.sock is read at mysql_close entry: no send probe needed.
    s = SynthCapture(str(tmp_path / "d.tq"), wire=False)
    a = s.open(0.1)
    s.close(1.0, a, ev.REFCOUNT, send=False, sock=False, last_errno=2006)
    s.finish(2.0)
    [q] = report_of(s.path).quits
    assert q.cause == "server" and q.evidence == ["kernel_socket_dropped"] and q.wire == "unobserved"
    assert "after error 2006" in q.reason and "refcount" in q.reason


def test_tcp_close_wait_after_a_sent_com_quit_is_not_evidence(tmp_path):
    # The state the client's close() found comes after the COM_QUIT: on loopback the server's
    # FIN often arrives in between (13 of 39 real known-causes closes). A normal close stays one.
    s = SynthCapture(str(tmp_path / "c.tq"))
    a, b = s.open(0.1), s.open(0.2)
    s.close(1.0, a, ev.EXPLICIT_CLOSE, sock=True, last_errno=0, tcp_from="close_wait")
    s.close(1.1, b, ev.EXPLICIT_CLOSE, sock=True, last_errno=0, tcp_from="established")
    s.finish(2.0)
    r = report_of(s.path)
    assert [(q.cause, q.wire, q.evidence) for q in r.quits] == [("explicit_close", "confirmed", None)] * 2
    assert r.com_quit.by_cause["server"] == 0


def test_tcp_fin_before_mysql_close_is_server(tmp_path):
    # An idle connection the server ended (KILL, wait_timeout, stop): its FIN came in before
    # mysql_close began, and the COM_QUIT still went out into the closed connection.
    s = SynthCapture(str(tmp_path / "f.tq"))
    a, b = s.open(0.1), s.open(0.2)
    s.close(1.0, a, ev.EXPLICIT_CLOSE, sock=True, last_errno=0, tcp_from="close_wait", fin_first=True)
    s.close(1.1, b, ev.EXPLICIT_CLOSE, sock=True, last_errno=0, tcp_from="close_wait", fin_first=False)
    s.finish(2.0)
    r = report_of(s.path)
    assert [(q.cause, q.wire, q.evidence) for q in r.quits] == [
        ("server", "confirmed", ["kernel_fin_first"]), ("explicit_close", "confirmed", None)]
    assert "FIN had arrived before its mysql_close began" in r.quits[0].reason


def test_client_detected_error_with_a_kernel_sign_of_the_server_end_is_server(tmp_path):
    # 2013 and a confirmed COM_QUIT, but the kernel also saw the server's EOF first: no contradiction.
    s = SynthCapture(str(tmp_path / "z.tq"))
    engine = s.engine(0.05)
    a = s.open(0.1, engine=engine)
    s.peer_end(4.9, a)
    s.pool(5.0, engine, "invalidate", a, error=LOST_2013)
    s.close(5.001, a, ev.EXPLICIT_CLOSE)
    s.finish(6.0)
    [q] = report_of(s.path).quits
    assert q.cause == "server" and q.evidence == ["agent_error", "kernel_eof"] and q.wire == "confirmed"


def test_not_server_without_the_evidence(tmp_path):
    s = SynthCapture(str(tmp_path / "n.tq"))
    engine = s.engine(0.05)
    failed = s.open(0.1, fail=True)
    s.close(0.2, failed, ev.EXPLICIT_CLOSE, send=False)         # failed connect: not a COM_QUIT at all
    before = s.new_conn()
    s.close(0.3, before, ev.EXPLICIT_CLOSE, send=False)         # open not recorded: no proof it had opened
    deadlock = s.open(0.4, engine=engine)
    s.pool(0.5, engine, "invalidate", deadlock, error="OperationalError: (1213, 'Deadlock found; try restarting')")
    s.close(0.51, deadlock, ev.EXPLICIT_CLOSE)
    port = s.open(0.6, engine=engine)
    s.pool(0.7, engine, "invalidate", port, error="OperationalError: (2003, \"Can't connect on port 2013\")")
    s.close(0.71, port, ev.EXPLICIT_CLOSE)
    late = s.open(0.8, engine=engine)
    s.close(0.9, late, ev.EXPLICIT_CLOSE)
    s.pool(0.95, engine, "invalidate", late, error=LOST_2013)   # after its close: not evidence
    s.finish(2.0)
    r = report_of(s.path)
    assert r.com_quit.by_cause["server"] == 0 and r.connections.failed == 1
    assert r.com_quit.by_cause["explicit_close"] == 4
    assert [q.wire for q in r.quits] == ["not_sent", "confirmed", "confirmed", "confirmed"]
    assert any(f.title == "1 mysql_close call sent no COM_QUIT on the socket" for f in r.findings)
    assert not [f for f in r.findings if "ended by the server first" in f.title]


def test_no_send_probes_no_kernel_evidence(tmp_path):
    # Without the send probes silence proves nothing.
    s = SynthCapture(str(tmp_path / "w.tq"), wire=False)
    a = s.open(0.1)
    s.close(1.0, a, ev.EXPLICIT_CLOSE, send=False)
    s.finish(2.0)
    [q] = report_of(s.path).quits
    assert q.cause == "explicit_close" and q.wire == "unobserved" and q.evidence is None


def test_finding_counts_per_evidence_type(tmp_path):
    s = SynthCapture(str(tmp_path / "c.tq"))
    engine = s.engine(0.05)
    conns = [s.open(0.1 + i * 0.01, engine=engine) for i in range(5)]
    s.pool(1.0, engine, "invalidate", conns[0], error=LOST_2013)
    s.close(1.01, conns[0], ev.EXPLICIT_CLOSE, send=False)                # agent + kernel
    s.pool(1.1, engine, "soft_invalidate", conns[1], error="OperationalError: (2006, 'MySQL server has gone away')")
    s.close(1.11, conns[1], ev.EXPLICIT_CLOSE, send=False)                # agent + kernel
    s.close(1.2, conns[2], ev.GC, gen=1, send=False)                      # kernel
    s.close(1.3, conns[3], ev.EXPLICIT_CLOSE, send_ret=-104)              # kernel send failed
    s.close(1.4, conns[4], ev.EXPLICIT_CLOSE)
    s.finish(2.0)
    r = report_of(s.path)
    assert r.com_quit.by_cause["server"] == 4 and r.com_quit.by_cause["explicit_close"] == 1
    assert r.com_quit.wire["not_sent"] == 4 and r.com_quit.wire["confirmed"] == 1
    f = server_finding(r)
    assert f.title == "4 " + TITLE and f.count == 4
    assert "sent no COM_QUIT on a connection that had opened: 3" in f.evidence
    assert "send failed (EPIPE/ECONNRESET): 1" in f.evidence
    assert "(2013 lost connection during query × 1, 2006 server has gone away × 1): 2" in f.evidence
    assert "Both layers agree on 2 of them" in f.evidence
    assert "config/database.py:22 in get_db_session" in f.evidence
    text = render(r, "text")
    assert "ended by the server" in text


@pytest.mark.parametrize("error,code", [
    (LOST_2013, 2013),
    ("OperationalError: (MySQLdb.OperationalError) (2006, 'Server has gone away')", 2006),
    ("OperationalError: (2055, \"Lost connection to server at 'reading', system error: 104\")", 2055),
    ("OperationalError: (4031, 'The client was disconnected by the server because of inactivity.')", 4031),
    ("OperationalError: (1927, 'Connection was killed')", 1927),
    ("OperationalError: (1053, 'Server shutdown in progress')", 1053),
    ("InterfaceError: MySQL server has gone away", 2006),
    ("OperationalError: (1213, 'Deadlock found')", None),
    ("OperationalError: (2003, \"Can't connect to server on port 2013\")", None),
    ("ValueError: 2013", None),
    (None, None),
])
def test_server_gone_codes(error, code):
    assert server_gone_code(error) == code
