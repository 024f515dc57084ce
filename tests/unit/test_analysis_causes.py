"""Attribution: every COM_QUIT's cause from either layer, exact counts, disagreement is unknown."""

import pytest

from trace_quit.analysis import build_report, load, render
from synth import SynthCapture, known_causes
from trace_quit.tracer import events as ev

KNOWN = {"explicit_close": 7, "refcount": 11, "gc": 18, "shutdown": 3, "never_closed": 0, "server": 0, "unknown": 0}
KNOWN_GENS = {"0": 5, "1": 0, "2": 13}


def report_of(path):
    return build_report(load(str(path)))


@pytest.mark.parametrize("layers", [("agent", "bpf"), ("agent",), ("bpf",)], ids=["both", "agent-only", "bpf-only"])
def test_known_causes_exact_counts_from_either_layer(tmp_path, layers):
    r = report_of(known_causes(str(tmp_path / "kc.tq"), layers=layers))
    assert r.com_quit.by_cause == KNOWN
    assert r.com_quit.gc_by_generation == KNOWN_GENS
    assert r.connections.opened == 39 and r.connections.com_quit == 39
    assert r.connections.never_closed == 0 and r.connections.max_live == 18
    assert [c.connections for c in r.gc.that_closed_connections] == [5, 13]
    assert [c.generation for c in r.gc.that_closed_connections] == [0, 2]
    assert r.gc.by_generation == {"0": 2, "1": 2, "2": 2}
    assert r.layers.agent == ("agent" in layers) and r.layers.bpf == ("bpf" in layers)
    if "bpf" in layers:
        assert r.com_quit.wire == {"confirmed": 39, "not_sent": 0, "encrypted": 0, "unobserved": 0}
    else:
        assert r.com_quit.wire == {"confirmed": 0, "not_sent": 0, "encrypted": 0, "unobserved": 39}
        assert any(f.title == "the eBPF layer was not attached" for f in r.findings)
    if "agent" not in layers:
        assert any(f.title == "the Python agent was not loaded" for f in r.findings)
    assert not [f for f in r.findings if f.severity == "error"]


def test_known_causes_json_report_has_the_contract_counts(tmp_path):
    import json
    r = report_of(known_causes(str(tmp_path / "kc.tq")))
    doc = json.loads(render(r, "json"))
    assert doc["schema"] == "trace-quit/report/1"
    assert doc["com_quit"]["by_cause"] == KNOWN and doc["com_quit"]["gc_by_generation"] == KNOWN_GENS
    assert doc["capture_status"] == "complete"


def test_agent_batches_arriving_late_do_not_change_attribution(tmp_path):
    # The agent's lines reach the capture in batches, behind the kernel's: order by t, not position.
    r = report_of(known_causes(str(tmp_path / "kc.tq"), batch_agent=17))
    assert r.com_quit.by_cause == KNOWN and r.com_quit.gc_by_generation == KNOWN_GENS


def test_layers_disagreeing_give_unknown_naming_what_each_said(tmp_path):
    s = SynthCapture(str(tmp_path / "d.tq"))
    a, b, c = s.open(0.1), s.open(0.2), s.open(0.3)
    s.close(0.5, a, ev.REFCOUNT, bpf_cause=ev.EXPLICIT_CLOSE)
    s.collection(0.6, 1, destroy=[b])
    s.close(0.7, c, ev.GC, gen=1, bpf_gen=2, cid=99)
    s.finish(1.0)
    r = report_of(s.path)
    assert r.com_quit.by_cause["unknown"] == 2 and r.com_quit.by_cause["gc"] == 1
    reasons = sorted(q.reason for q in r.quits if q.cause == "unknown")
    assert reasons == [
        "the layers disagree: the agent said gc (generation 1), the eBPF layer said gc (generation 2)",
        "the layers disagree: the agent said refcount, the eBPF layer said explicit_close",
    ]
    f = [f for f in r.findings if f.title == "2 COM_QUITs could not be attributed"]
    assert f and "the layers disagree" in f[0].evidence


def test_kernel_unknown_is_missing_evidence_not_disagreement(tmp_path):
    s = SynthCapture(str(tmp_path / "u.tq"))
    a = s.open(0.1)
    s.close(0.2, a, ev.EXPLICIT_CLOSE, bpf_cause=ev.UNKNOWN)
    b = s.open(0.3)
    s.close(0.4, b, ev.UNKNOWN, agent_cause=ev.REFCOUNT)
    s.finish(1.0)
    r = report_of(s.path)
    assert r.com_quit.by_cause["explicit_close"] == 1 and r.com_quit.by_cause["refcount"] == 1
    assert r.quits[0].reason == "the agent said explicit_close; the eBPF layer could not attribute it"


def test_kernel_alone_with_a_missing_bracket_probe_is_unknown(tmp_path):
    s = SynthCapture(str(tmp_path / "b.tq"), layers=("bpf",))
    a = s.open(0.1)
    s.close(0.2, a, ev.UNKNOWN)
    s.finish(1.0)
    r = report_of(s.path)
    assert r.com_quit.by_cause["unknown"] == 1
    assert "bracket probe was missing" in r.quits[0].reason and "agent was not loaded" in r.quits[0].reason


def test_never_closed_at_process_exit(tmp_path):
    s = SynthCapture(str(tmp_path / "n.tq"))
    a = s.open(0.1)
    s.open(0.2), s.open(0.3)  # b and c
    s.close(0.4, a, ev.EXPLICIT_CLOSE)
    s.finish(2.0, status=137)  # killed: b and c never sent COM_QUIT
    r = report_of(s.path)
    assert r.com_quit.by_cause["never_closed"] == 2 and r.connections.never_closed == 2
    assert r.connections.com_quit == 1 and r.connections.opened == 3
    # No COM_QUIT means nothing to confirm: never_closed is not in the wire counts.
    assert sum(r.com_quit.wire.values()) == 1
    assert r.program.exit_status == 137
    f = [f for f in r.findings if f.title == "2 connections were never closed: no COM_QUIT was sent"]
    assert f and "exit status 137" in f[0].evidence and "aborted client" in f[0].evidence


def test_open_at_the_end_of_a_truncated_capture_has_no_cause(tmp_path):
    s = SynthCapture(str(tmp_path / "t.tq"))
    a = s.open(0.1)
    s.open(0.2)
    s.close(0.3, a, ev.REFCOUNT)
    path = str(tmp_path / "t.tq")
    s.w.close({})
    from synth import strip_trailer
    strip_trailer(path)
    r = report_of(path)
    assert r.capture_status == "truncated"
    assert r.connections.open_at_end == 1 and r.com_quit.by_cause["never_closed"] == 0
    assert any(f.title == "the capture is truncated (no trailer)" for f in r.findings)


def test_failed_connect_is_not_a_com_quit(tmp_path):
    s = SynthCapture(str(tmp_path / "f.tq"))
    bad = s.open(0.1, fail=True)
    s.close(0.2, bad, ev.REFCOUNT, send=False)  # its dealloc calls mysql_close on a dead handle
    good = s.open(0.3)
    s.close(0.4, good, ev.EXPLICIT_CLOSE)
    s.finish(1.0)
    r = report_of(s.path)
    assert r.connections.failed == 1 and r.connections.opened == 1 and r.connections.com_quit == 1
    assert r.com_quit.by_cause["refcount"] == 0 and r.com_quit.wire["not_sent"] == 0


def test_reused_address_is_split_into_lives(tmp_path):
    s = SynthCapture(str(tmp_path / "r.tq"))
    addr = s.new_conn()
    for i in range(11):  # the refcount loop of known-causes reuses one address
        s.open(0.1 + i * 0.01, conn=addr)
        s.close(0.105 + i * 0.01, addr, ev.REFCOUNT)
    s.open(0.5, conn=addr)
    s.collection(0.6, 0, destroy=[addr])
    s.finish(1.0)
    r = report_of(s.path)
    assert r.connections.opened == 12 and r.com_quit.by_cause["refcount"] == 11 and r.com_quit.by_cause["gc"] == 1
    assert r.connections.max_live == 1


def test_wire_states(tmp_path):
    s = SynthCapture(str(tmp_path / "w.tq"))
    conns = [s.open(0.1 + i * 0.01) for i in range(4)]
    s.close(0.2, conns[0], ev.EXPLICIT_CLOSE, wire=ev.WIRE_CONFIRMED)
    s.close(0.3, conns[1], ev.EXPLICIT_CLOSE, wire=ev.WIRE_ENCRYPTED)
    s.close(0.4, conns[2], ev.EXPLICIT_CLOSE, send=False)
    s.close(0.5, conns[3], ev.EXPLICIT_CLOSE, wire=ev.WIRE_CONFIRMED)
    s.finish(1.0)
    r = report_of(s.path)
    assert r.com_quit.wire == {"confirmed": 2, "not_sent": 1, "encrypted": 1, "unobserved": 0}
    # Nothing sent after a recorded connect: the server had ended it (test_analysis_server.py).
    assert r.com_quit.by_cause["server"] == 1 and r.com_quit.by_cause["explicit_close"] == 3


def test_wire_unobserved_without_send_probes(tmp_path):
    s = SynthCapture(str(tmp_path / "w.tq"), wire=False)
    a = s.open(0.1)
    s.close(0.2, a, ev.EXPLICIT_CLOSE)
    s.finish(1.0)
    r = report_of(s.path)
    assert r.layers.bpf and not r.layers.wire
    assert r.com_quit.wire == {"confirmed": 0, "not_sent": 0, "encrypted": 0, "unobserved": 1}


def test_wire_from_sends_when_the_kernel_verdict_is_lost(tmp_path):
    # bpf_close_ret lost: the bpf_wire head decides (confirmed / TLS record / other bytes).
    s = SynthCapture(str(tmp_path / "h.tq"))
    conns = [s.open(0.1 + i * 0.01) for i in range(3)]
    for i, head in enumerate(("0100000001", "1703030020", "0300000001")):
        t = s.ns(0.2 + i * 0.1)
        s.emit({"k": ev.CONN_CLOSE, "t": t, "src": "agent", "pid": s.pid, "tid": s.pid, "conn": conns[i], "stack": []})
        s.emit({"k": ev.BPF_CLOSE, "t": t + 10, "src": "bpf", "pid": s.pid, "tid": s.pid, "conn": conns[i],
                "cause": "explicit_close", "gen": None, "self": conns[i] - 16, "sock": True, "last_errno": 0,
                "eof": False})
        s.emit({"k": ev.BPF_WIRE, "t": t + 20, "src": "bpf", "pid": s.pid, "tid": s.pid, "conn": conns[i], "fd": 6,
                "len": 5, "head": head, "quit": head == "0100000001", "tls": head.startswith("17"), "ret": 5})
    s.finish(1.0)
    r = report_of(s.path)
    assert [q.wire for q in r.quits] == ["confirmed", "encrypted", "not_sent"]


def test_server_gone_before_the_client_close_is_server(tmp_path):
    s = SynthCapture(str(tmp_path / "s.tq"))
    engine = s.engine(0.05)
    a = s.open(0.1, engine=engine)
    s.pool(5.0, engine, "invalidate", a, error="OperationalError: (2013, 'Lost connection to server during query')")
    s.pool(5.0001, engine, "close", a)
    s.close(5.001, a, ev.EXPLICIT_CLOSE, send=False)
    s.finish(6.0)
    r = report_of(s.path)
    assert r.com_quit.by_cause["server"] == 1 and r.connections.server == 1 and r.connections.com_quit == 0
    assert "2013" in r.quits[0].reason and "explicit_close" in r.quits[0].reason
    assert r.quits[0].evidence == ["agent_error", "kernel_not_sent"] and r.quits[0].wire == "not_sent"
    assert any(f.title == "1 connection was ended by the server first (KILL, wait_timeout, restart)"
               for f in r.findings)


def test_close_without_a_recorded_open_counts_and_is_live_from_the_start(tmp_path):
    # Another process (no fork recorded) closes a connection whose open was not recorded.
    s = SynthCapture(str(tmp_path / "i.tq"))
    addr = s.new_conn()
    s.close(0.5, addr, ev.REFCOUNT, pid=4343)
    s.finish(1.0)
    r = report_of(s.path)
    assert r.connections.opened == 0 and r.connections.opened_before_capture == 1
    assert r.com_quit.by_cause["refcount"] == 1 and r.connections.max_live == 1
    assert r.timeline.live[0] == [0.0, 1]


def test_gc_collection_linked_without_agent_ids_by_thread(tmp_path):
    # Kernel only: a gc close is tied to the collection running on its thread.
    s = SynthCapture(str(tmp_path / "k.tq"), layers=("bpf",))
    conns = [s.open(0.1) for _ in range(4)]
    s.collection(1.0, 1, destroy=conns[:3], tid=5001, thread="ignored")
    s.close(2.0, conns[3], ev.GC, gen=1, tid=5002)  # no collection recorded on its thread
    s.finish(3.0)
    r = report_of(s.path)
    assert r.com_quit.gc_by_generation["1"] == 4
    [c] = r.gc.that_closed_connections
    assert c.connections == 3 and c.thread == "tid 5001" and c.cid is None
