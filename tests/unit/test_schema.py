"""The executable event schema (tracer/events.py): real captures, synthetic ones, and bad records."""

import ast
import gzip
import json
import os

import pytest

from synth import SynthCapture, engine_per_call, known_causes
from trace_quit.analysis import build_report
from trace_quit.analysis.capture import describe_lacks, iter_records, load
from trace_quit.tracer import events as ev

DATA = os.path.join(os.path.dirname(__file__), "data")
FIXTURES = sorted(n for n in os.listdir(DATA) if n.endswith(".tqcap.gz"))


@pytest.mark.parametrize("name", FIXTURES)
def test_every_record_of_every_real_fixture_validates(name):
    with gzip.open(os.path.join(DATA, name), "rt") as f:
        header = json.loads(f.readline())
        ev.check_header(header)
        kinds = set()
        for line in f:
            record = json.loads(line)
            ev.check(record, header["version"])
            kinds.add(record["k"])
    # Revision 1 (the first recordings) and the current one (tests/make_fixtures.py's).
    assert header["version"] in ev.READABLE and ev.TRAILER in kinds
    assert not kinds - set(ev.KINDS), "kinds the schema does not declare: %s" % (kinds - set(ev.KINDS))


def test_revision_1_captures_read_and_say_what_they_lack(tmp_path):
    path = tmp_path / "kc.tqcap"
    with gzip.open(os.path.join(DATA, "known-causes.tqcap.gz"), "rb") as f:
        path.write_bytes(f.read())
    cap = load(str(path))
    assert cap.revision == 1 and cap.invalid == {} and cap.trailer is not None
    assert cap.lacks == {"bpf_close": ["eof", "last_errno", "sock"], "bpf_close_ret":
                         ["fin_first", "send_err", "tcp_from", "tcp_to"], "bpf_connect": ["fd"], "bpf_wire": ["ret"]}
    # Optional fields a later revision added (gc_counts.enabled, gc_start.app_site) are not
    # lacking: absent is normal.
    # Not filled in: a lacking key stays absent, so "unknown" is never read as False/0.
    assert all(e.sock is None for e in cap.events if e.k == ev.BPF_CLOSE)
    assert describe_lacks(cap).startswith("a revision-1 capture: its records lack bpf_close.eof, last_errno, sock;")


def test_synthetic_captures_validate_at_the_current_revision(tmp_path):
    for path in (known_causes(str(tmp_path / "kc.tq")),
                 engine_per_call(str(tmp_path / "epc.tq"), n=40) and str(tmp_path / "epc.tq")):
        cap = load(path)
        assert cap.revision == ev.VERSION and cap.invalid == {} and cap.lacks == {}
        assert cap.trailer is not None


def test_synthetic_records_carry_every_key_the_real_tracer_writes(tmp_path):
    s = SynthCapture(str(tmp_path / "k.tq"))
    s.close(0.2, s.open(0.1), ev.GC, gen=2, cid=1)
    s.finish(1.0)
    by_kind = {e["k"]: e for e in iter_records(s.path) if "k" in e}  # as written: its keys
    for kind in (ev.BPF_CONNECT, ev.BPF_CLOSE, ev.BPF_CLOSE_RET, ev.BPF_WIRE, ev.CONN_OPEN, ev.CONN_DESTROY,
                 ev.AGENT_START):
        declared = {f.name for f in ev.KINDS[kind][1]} | {"k"}
        pymysql_only = {"driver", "fd", "obj", "quit", "error"} if kind.startswith("conn_") else set()
        attach_only = {"attached", "gc_counts", "gc_stats", "before_attach", "origin"}  # an agent injected with --pid
        assert declared - {"forked_from", "unix_socket"} - pymysql_only - attach_only <= set(by_kind[kind]), kind
    assert by_kind[ev.BPF_CLOSE]["gen"] == 2 and by_kind[ev.BPF_CLOSE]["self"] == by_kind[ev.BPF_CLOSE]["conn"] - 16


def test_the_fast_path_lines_of_the_kernel_decoder_validate():
    # tracer/bpf/decode.py's generated hot path (JSON lines) for every kind: each line is valid.
    from trace_quit.tracer.bpf import decode

    data = b"".join(decode.RECORD_HEADER.pack(decode.EVENT_SIZE, 0) + decode.pack(code, 10, 42, 43, gen=-1)
                    for code in sorted(decode._BY_CODE))
    text, counts, _, n = decode.lines(data)
    assert n == len(decode._BY_CODE)
    for line in text.splitlines():
        ev.check(json.loads(line))


@pytest.mark.parametrize("record, why", [
    ({"k": ev.BPF_CLOSE, "t": 1, "src": "bpf", "pid": 1, "tid": 1, "conn": "0x10", "cause": "gc", "gen": 1,
      "self": 0, "sock": True, "last_errno": 0, "eof": False}, "conn is str, not int"),
    ({"k": ev.CONN_OPEN, "t": 1, "src": "agent", "pid": 1, "tid": 1, "stack": []}, "conn is missing"),
    ({"k": ev.BPF_CONNECT, "t": 1, "src": "bpf", "pid": 1, "tid": 1, "conn": 1, "ok": 1, "t0": 0, "fd": 3},
     "ok is int, not bool"),
    ({"k": ev.AGENT_LOST, "t": 1, "src": "agent", "pid": 1, "tid": 1, "n": "x"}, "n is str, not int"),
    ({"k": ev.GC_START, "t": True, "src": "agent", "pid": 1, "tid": 1, "gen": 0, "cid": 1, "site": "", "thread": ""},
     "t is bool, not int"),
])
def test_malformed_records_are_refused_saying_why(record, why):
    with pytest.raises(ev.SchemaError, match=why):
        ev.check(record)


def test_an_older_revision_may_lack_what_a_later_one_added():
    close = {"k": ev.BPF_CLOSE, "t": 1, "src": "bpf", "pid": 1, "tid": 1, "conn": 1, "cause": "gc", "gen": 1, "self": 0}
    ev.check(close, revision=1)
    with pytest.raises(ev.SchemaError, match="sock is missing"):
        ev.check(close, revision=2)
    assert ev.added_after(ev.BPF_CLOSE, 1) == ("sock", "last_errno", "eof")


def test_unknown_kinds_pass_with_their_common_keys_checked():
    assert ev.check({"k": "from_the_future", "t": 1, "x": 2})
    with pytest.raises(ev.SchemaError):
        ev.check({"k": "from_the_future", "t": "1"})


def test_only_agent_kinds_may_come_through_the_channel():
    assert ev.AGENT_KINDS == {k for k, (src, _) in ev.KINDS.items() if src == ev.SRC_AGENT}
    assert not {ev.TRAILER, ev.BPF_CLOSE, ev.BPF_CLOSE_RET, ev.CHILD_EXIT, ev.BPF_PROBES} & ev.AGENT_KINDS


def test_events_module_parses_as_python_3_8():
    # The agent loads tracer/events.py by path inside the traced interpreter (3.8+).
    with open(ev.__file__, encoding="utf-8") as f:
        ast.parse(f.read(), feature_version=(3, 8))


def test_records_the_schema_refuses_are_left_out_and_counted(tmp_path):
    s = SynthCapture(str(tmp_path / "bad.tq"))
    a = s.open(0.1)
    # A forged kernel close with a string address, and an agent close without its address.
    s.emit_raw({"k": ev.BPF_CLOSE, "t": s.ns(0.2), "src": "bpf", "pid": s.pid, "tid": s.pid, "conn": str(a),
                "cause": "gc", "gen": 2, "self": 0, "sock": True, "last_errno": 0, "eof": False})
    s.emit_raw({"k": ev.CONN_CLOSE, "t": s.ns(0.2), "src": "agent", "pid": s.pid, "tid": s.pid, "stack": []})
    s.close(0.3, a, ev.EXPLICIT_CLOSE)
    s.finish(1.0)
    cap = load(s.path)
    assert cap.invalid == {ev.BPF_CLOSE: 1, ev.CONN_CLOSE: 1}
    assert cap.invalid_examples == ["bpf_close: conn is str, not int", "conn_close: conn is missing"]
    r = build_report(cap)
    assert r.malformed == 2 and r.com_quit.by_cause["explicit_close"] == 1 and r.com_quit.by_cause["gc"] == 0
    assert any(f.title == "2 records not matching the event schema were left out" for f in r.findings)


@pytest.mark.parametrize("kind", [ev.BPF_CLOSE, ev.BPF_CLOSE_RET, ev.CHILD_EXIT, ev.SERVER_COUNT, ev.BPF_PROBES])
def test_a_kernel_or_tracer_record_stamped_agent_is_refused(kind):
    # What the agent channel stamps on every line it passes: such a record was forged in the program.
    record = {"k": kind, "t": 1, "src": "agent", "pid": 1, "tid": 1, "conn": 1, "cause": "gc", "gen": 2, "self": 0,
              "sock": True, "last_errno": 0, "eof": False, "wire": "confirmed", "sends": 1, "t0": 0, "send_err": 0,
              "tcp_from": None, "tcp_to": None, "fin_first": None, "status": 0, "count": 1, "probes": [],
              "missing": []}
    with pytest.raises(ev.SchemaError, match="src is 'agent'"):
        ev.check(record)
    ev.check(dict(record, src=ev.KINDS[kind][0]))


def test_notes_come_from_the_tracer_or_the_kernel_layer():
    for src in ("tracer", "bpf"):
        ev.check({"k": ev.TRACER_NOTE, "t": 1, "src": src, "level": "error", "text": "x"})
    with pytest.raises(ev.SchemaError):
        ev.check({"k": ev.TRACER_NOTE, "t": 1, "src": "agent", "level": "error", "text": "x"})


def test_a_forged_trailer_does_not_end_the_capture(tmp_path):
    # The agent channel stamps src=agent on what it passes; the writer's trailer has no src.
    s = SynthCapture(str(tmp_path / "ft.tq"))
    a = s.open(0.1)
    s.emit_raw({"k": ev.TRAILER, "t": s.ns(0.15), "src": "agent", "counts": {}, "exit_status": 0})
    s.close(0.2, a, ev.EXPLICIT_CLOSE)
    s.finish(1.0, status=7)
    cap = load(s.path)
    assert cap.invalid == {ev.TRAILER: 1} and cap.damaged_at_line is None
    r = build_report(cap)
    assert r.program.exit_status == 7 and r.com_quit.by_cause["explicit_close"] == 1


def test_the_kernel_decoder_writes_exactly_the_declared_bpf_fields():
    # tracer/bpf/decode.py, for every kind code it knows: keys and types as declared.
    from trace_quit.tracer.bpf import decode

    for code in sorted(decode._BY_CODE):
        for cause, gen, flags in ((0, -1, 0), (3, 2, 7), (1, 1, 1)):
            record = decode.decode(decode.pack(code, 10, 42, 43, conn=0x7F00, gen=gen, cause=cause, flags=flags,
                                               hlen=5, head=ev.COM_QUIT_BYTES + bytes(11), wire=1))
            kind = record["k"]
            declared = {f.name for f in ev.KINDS[kind][1]} | {"k"}
            assert set(record) == declared, kind
            ev.check(record)