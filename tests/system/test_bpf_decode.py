"""Decoding ring buffer records: the batch line path says exactly what the dict path says (no root)."""

import json
import random
import struct

from trace_quit.tracer import events as ev
from trace_quit.tracer.bpf import session
from trace_quit.tracer.bpf.session import EVENT, RECORD, BpfSession, decode_event


class _Sink:
    def __init__(self):
        self.dicts, self.text, self.counts, self.ok = [], [], {}, 0

    def emit(self, e):
        self.dicts.append(e)

    def emit_text(self, text, counts, ok):
        self.text.append(text)
        for k, n in counts.items():
            self.counts[k] = self.counts.get(k, 0) + n
        self.ok += ok


def _session(sink, lines):
    s = BpfSession.__new__(BpfSession)  # no bcc, no root: only the decoding state
    s.emit, s.emit_text = sink.emit, (sink.emit_text if lines else None)
    s._decode_errors = 0
    s.drain_stats = {"batches": 0, "records": 0, "bytes": 0, "seconds": 0.0}
    return s


def _records(n, seed=1):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rnd.choice([1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 99])
        head = bytes(rnd.randrange(256) for _ in range(16))
        fields = (rnd.randrange(1 << 62), rnd.randrange(1 << 47), rnd.randrange(-200, 1 << 20), rnd.randrange(1 << 40),
                  rnd.randrange(1 << 22), rnd.randrange(1 << 22), kind, rnd.randrange(6), rnd.randrange(4),
                  rnd.randrange(8), rnd.randrange(-1, 13), rnd.randrange(17), rnd.randrange(-1, 3000), head)
        if kind == 4 and rnd.random() < 0.5:
            fields = fields[:2] + (5,) + fields[3:11] + (5, fields[12], ev.COM_QUIT_BYTES + bytes(11))
        out.append(fields)
    return out


def _pack(records, header_len=EVENT.size):
    return b"".join(RECORD.pack(header_len, 0, *r) for r in records)


def test_line_path_and_dict_path_give_the_same_events():
    records = _records(5000)
    data = _pack(records)
    by_dict, by_line = _Sink(), _Sink()
    _session(by_dict, lines=False)._deliver(data)
    _session(by_line, lines=True)._deliver(data)
    expected = [d for d in (decode_event(r) for r in records) if d is not None]
    assert by_dict.dicts == expected
    lines = "".join(by_line.text).splitlines()
    assert [json.loads(line) for line in lines] == expected
    # Each line is what events.encode writes for the same dict.
    assert all(json.loads(ev.encode(d)) == json.loads(line) for d, line in zip(expected, lines))
    kinds = {}
    for d in expected:
        kinds[d["k"]] = kinds.get(d["k"], 0) + 1
    assert by_line.counts == kinds
    assert by_line.ok == sum(1 for d in expected if d["k"] == ev.BPF_CONNECT and d["ok"])


def test_records_of_another_size_and_discarded_ones_take_the_walking_path():
    records = _records(50, seed=2)
    odd = struct.pack("<II", 12 | (1 << 30), 0) + bytes(16)  # a discarded 12-byte record
    data = _pack(records[:10]) + odd + _pack(records[10:])
    sink = _Sink()
    _session(sink, lines=False)._deliver(data)
    assert sink.dicts == [d for d in (decode_event(r) for r in records) if d is not None]


def test_close_and_close_ret_keys():
    close = decode_event((1, 0x10, 0, 0x7F, 7, 8, 2, 1, 0, 3 | 4, -1, 0, 2013, bytes(16)))
    assert close == {"k": "bpf_close", "t": 1, "src": "bpf", "pid": 7, "tid": 8, "conn": 0x10, "cause": "explicit_close",
                     "gen": None, "self": 0x7F, "sock": True, "last_errno": 2013, "eof": True}
    ret = decode_event((2, 0x10, 1, 1, 7, 8, 3, 1, 3, 8, 9, 0, 32, bytes(16)))
    assert ret == {"k": "bpf_close_ret", "t": 2, "src": "bpf", "pid": 7, "tid": 8, "conn": 0x10, "wire": "not_sent",
                   "sends": 1, "t0": 1, "send_err": 32, "tcp_from": "close_wait", "tcp_to": "last_ack", "fin_first": True}
    unread = decode_event((1, 0x10, 0, 0, 7, 8, 2, 0, 0, 0, -1, 0, -1, bytes(16)))
    assert (unread["sock"], unread["last_errno"], unread["eof"]) == (None, None, False)
    assert session.TCP_STATES[8] == "close_wait"


def test_a_failing_formatter_falls_back_to_one_record_at_a_time(monkeypatch):
    records = _records(200, seed=3)
    sink = _Sink()
    monkeypatch.setattr(session, "_CLOSE_LINE", "%d")  # wrong arity: the batch formatter raises
    _session(sink, lines=True)._deliver(_pack(records))
    expected = [d for d in (decode_event(r) for r in records) if d is not None]
    assert [json.loads(line) for line in "".join(sink.text).splitlines()] == expected
    assert [d["k"] for d in sink.dicts] == ["note"]  # said once
