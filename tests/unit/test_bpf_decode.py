"""The one decoder of kernel records (tracer/bpf/decode.py): its tables match probes.c, and the
batch line path says exactly what the dict path says (no root, no bcc)."""

import json
import random
import re
import struct

from trace_quit.tracer import events as ev
from trace_quit.tracer.bpf import decode, session
from trace_quit.tracer.bpf.compile import CONFIG, probes_source
from trace_quit.tracer.bpf.session import BpfSession

C = probes_source()


def c_defines():
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^#define (\w+) (\d+)\b", C, re.M)}


def c_struct_fields(name):
    body = re.search(r"struct %s \{(.*?)\n\};" % name, C, re.S).group(1)
    return tuple(m.group(1) for m in re.finditer(r"^\s+\w+ (\w+)(?:\[\w+\])?;", body, re.M))


def test_codes_match_probes_c():
    defines = c_defines()
    assert {n: defines[n] for n in decode.C_CODES} == decode.C_CODES
    # ... and the C file has no code of these families that the tables lack.
    families = ("EV_", "CAUSE_", "WIRE_", "OP_", "CLOSE_SOCK_", "CLOSE_PEER_")
    assert {n for n in defines if n.startswith(families)} == set(decode.C_CODES)
    assert {decode.EV[k.c_name] for k in decode.KINDS} == set(decode.EV.values())


def test_layouts_match_probes_c():
    assert c_struct_fields("event")[:4] == ("ts", "pid", "tid", "kind")
    for kind in decode.KINDS:
        if kind.c_struct:
            assert c_struct_fields(kind.c_struct) == kind.c_fields, kind.c_name
            assert "struct %s %s;" % (kind.c_struct, kind.c_struct[3:]) in C
    assert decode.EVENT_SIZE == 72 and decode.RECORD_SIZE == 80


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


def _events(n, seed=1):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        code = rnd.choice([1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 99])
        if code == 99:
            out.append(decode.HEAD.pack(1, 2, 3, 99) + bytes(decode.PAYLOAD_SIZE))
            continue
        kind = decode._BY_CODE[code].kind
        fields = {}
        for name, f in zip(kind.c_fields, re.findall(r"\d*[a-zA-Z]", kind.fmt)):
            if f == "16s":
                fields[name] = ev.COM_QUIT_BYTES + bytes(11) if rnd.random() < 0.5 else bytes(
                    rnd.randrange(256) for _ in range(16))
            elif f == "B":
                fields[name] = rnd.randrange(13)
            elif f in "iq":
                fields[name] = rnd.randrange(-200, 3000)
            else:
                fields[name] = rnd.randrange(1 << 31)
        if code == 4 and rnd.random() < 0.5:
            fields.update(len=5, hlen=5)
        out.append(decode.pack(code, rnd.randrange(1 << 62), rnd.randrange(1 << 22), rnd.randrange(1 << 22), **fields))
    return out


def _pack(events, header_len=decode.EVENT_SIZE):
    return b"".join(decode.RECORD_HEADER.pack(header_len, 0) + e for e in events)


def test_line_path_and_dict_path_give_the_same_events():
    events = _events(5000)
    data = _pack(events)
    by_dict, by_line = _Sink(), _Sink()
    _session(by_dict, lines=False)._deliver(data)
    _session(by_line, lines=True)._deliver(data)
    expected = [d for d in (decode.decode(e) for e in events) if d is not None]
    assert by_dict.dicts == expected
    lines = "".join(by_line.text).splitlines()
    assert [json.loads(line) for line in lines] == expected
    assert all(json.loads(ev.encode(d)) == json.loads(line) for d, line in zip(expected, lines))
    kinds = {}
    for d in expected:
        kinds[d["k"]] = kinds.get(d["k"], 0) + 1
    assert by_line.counts == kinds
    assert by_line.ok == sum(1 for d in expected if d["k"] == ev.BPF_CONNECT and d["ok"])


def test_records_of_another_size_and_discarded_ones_take_the_walking_path():
    events = _events(50, seed=2)
    odd = struct.pack("<II", 12 | (1 << 30), 0) + bytes(16)  # a discarded 12-byte record
    data = _pack(events[:10]) + odd + _pack(events[10:])
    for lines in (False, True):
        sink = _Sink()
        _session(sink, lines=lines)._deliver(data)
        got = sink.dicts if not lines else [json.loads(x) for x in "".join(sink.text).splitlines()]
        assert got == [d for d in (decode.decode(e) for e in events) if d is not None]


def test_close_and_close_ret_keys():
    close = decode.decode(decode.pack(2, 1, 7, 8, conn=0x10, self=0x7F, gen=-1, last_errno=2013, cause=1,
                                      flags=3 | 4))
    assert close == {"k": "bpf_close", "t": 1, "src": "bpf", "pid": 7, "tid": 8, "conn": 0x10,
                     "cause": "explicit_close", "gen": None, "self": 0x7F, "sock": True, "last_errno": 2013,
                     "eof": True}
    ret = decode.decode(decode.pack(3, 2, 7, 8, conn=0x10, t0=1, sends=1, send_err=32, wire=3, tcp_from=8, tcp_to=9,
                                    fin_first=1))
    assert ret == {"k": "bpf_close_ret", "t": 2, "src": "bpf", "pid": 7, "tid": 8, "conn": 0x10, "wire": "not_sent",
                   "sends": 1, "t0": 1, "send_err": 32, "tcp_from": "close_wait", "tcp_to": "last_ack",
                   "fin_first": True}
    unread = decode.decode(decode.pack(2, 1, 7, 8, conn=0x10, gen=-1, last_errno=-1))
    assert (unread["sock"], unread["last_errno"], unread["eof"]) == (None, None, False)
    gc = decode.decode(decode.pack(3 + 3, 5, 7, 8, collected=12, gen=2))
    assert gc == {"k": "bpf_gc_done", "t": 5, "src": "bpf", "pid": 7, "tid": 8, "collected": 12, "gen": 2}
    assert session.TCP_STATES[8] == "close_wait"


def test_a_failing_formatter_falls_back_to_one_record_at_a_time(monkeypatch):
    events = _events(200, seed=3)
    sink = _Sink()
    def broken(*fields):
        return "%d" % ()   # noqa: F507 -- a formatting bug on purpose: the batch formatter raises

    monkeypatch.setattr(decode, "_lines", broken)
    _session(sink, lines=True)._deliver(_pack(events))
    expected = [d for d in (decode.decode(e) for e in events) if d is not None]
    assert [json.loads(line) for line in "".join(sink.text).splitlines()] == expected
    assert [d["k"] for d in sink.dicts] == ["note"]  # said once


def test_no_literal_codes_left_in_the_session():
    src = open(session.__file__).read()
    assert not re.search(r"kind == \d|cause == \d|flags & \d", src)


def test_dump_bpf_prints_the_program_without_running_anything(tmp_path):
    import subprocess
    import sys

    marker = tmp_path / "ran"
    out = subprocess.run([sys.executable, "-m", "trace_quit.tracer.cli", "--dump-bpf", "--", sys.executable, "-c",
                          "open(%r, 'w')" % str(marker)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second, rest = out.stdout.split("\n", 2)
    assert first.startswith("// cflags: ") and "-DRINGBUF_PAGES=" in first
    assert second.startswith("// config: ") and "AFTER_ATEXIT=" in second and "CONN_OFFSET=16" in second
    assert rest == C and not marker.exists()


def test_config_slots_match_probes_c():
    """compile.CONFIG (what depends on the program, written at run time) is probes.c's CFG_* slots."""
    defines = c_defines()
    slots = {name: defines["CFG_" + name] for name in ("CONN_OFFSET", "LAST_ERRNO_OFF", "AFTER_ATEXIT",
                                                       "GC_SYM_GEN_REG")}
    for i, part in enumerate(("KIND", "REG", "OFF", "SIZE", "SIGNED")):
        slots["GC_START_ARG_" + part] = defines["CFG_GC_START_ARG"] + i
        slots["GC_DONE_ARG_" + part] = defines["CFG_GC_DONE_ARG"] + i
    assert CONFIG == slots and max(slots.values()) < defines["CFG_SLOTS"]
