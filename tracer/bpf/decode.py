"""Kernel records (probes.c's ``struct event``) to bpf_* records: the one decoder.

One table, ``KINDS``, says for each event kind its code (``EV_*`` in probes.c), the layout of
its payload (the member of the C union, field by field), and how each JSON key of the record
is made from the payload. Both paths are built from it: ``decode`` (one record to a dict) and
``lines`` (a batch of ring buffer records straight to JSON lines, the hot path), so they
cannot disagree. The JSON keys are those of tracer/events.py. tests/unit/test_bpf_decode.py
checks the codes and layouts against probes.c and both paths against each other.
"""

import collections
import json
import struct

from trace_quit.tracer import events as ev

# --- codes shared with probes.c (#define NAME value) ----------------------------------------
EV = {"EV_CONNECT": 1, "EV_CLOSE": 2, "EV_CLOSE_RET": 3, "EV_WIRE": 4, "EV_GC_START": 5, "EV_GC_DONE": 6,
      "EV_FINALIZE": 7, "EV_FORK": 8, "EV_EXIT": 9, "EV_PEER_END": 10}
CAUSE = {"CAUSE_UNKNOWN": 0, "CAUSE_EXPLICIT_CLOSE": 1, "CAUSE_REFCOUNT": 2, "CAUSE_GC": 3, "CAUSE_SHUTDOWN": 4}
WIRE = {"WIRE_NOT_SENT": 0, "WIRE_CONFIRMED": 1, "WIRE_ENCRYPTED": 2, "WIRE_OTHER": 3}
OP = {"OP_READ": 1, "OP_WRITE": 2}
CLOSE_FLAGS = {"CLOSE_SOCK_PRESENT": 1, "CLOSE_SOCK_KNOWN": 2, "CLOSE_PEER_ENDED": 4}
#: Every table above, as probes.c's #define names (the unit test compares them all).
C_CODES = dict(**EV, **CAUSE, **WIRE, **OP, **CLOSE_FLAGS)

CAUSES = {CAUSE["CAUSE_UNKNOWN"]: ev.UNKNOWN, CAUSE["CAUSE_EXPLICIT_CLOSE"]: ev.EXPLICIT_CLOSE,
          CAUSE["CAUSE_REFCOUNT"]: ev.REFCOUNT, CAUSE["CAUSE_GC"]: ev.GC, CAUSE["CAUSE_SHUTDOWN"]: ev.SHUTDOWN}
# WIRE_OTHER (bytes sent, none a COM_QUIT) is reported as not_sent, with "sends" > 0.
WIRES = {WIRE["WIRE_NOT_SENT"]: ev.WIRE_NOT_SENT, WIRE["WIRE_CONFIRMED"]: ev.WIRE_CONFIRMED,
         WIRE["WIRE_ENCRYPTED"]: ev.WIRE_ENCRYPTED, WIRE["WIRE_OTHER"]: ev.WIRE_NOT_SENT}
OPS = {OP["OP_READ"]: "read", OP["OP_WRITE"]: "write"}
#: Linux TCP states (include/net/tcp_states.h), as bpf_close_ret.tcp_from / tcp_to.
TCP_STATES = {1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2", 6: "time_wait",
              7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing", 12: "new_syn_recv"}

_SOCK_PRESENT, _SOCK_KNOWN, _PEER_ENDED = (CLOSE_FLAGS[n] for n in ("CLOSE_SOCK_PRESENT", "CLOSE_SOCK_KNOWN",
                                                                    "CLOSE_PEER_ENDED"))
_GC = CAUSE["CAUSE_GC"]

# --- layout -----------------------------------------------------------------------------------
#: struct event's head: ts, pid, tid, kind, 7 bytes of padding; the union follows at 24.
HEAD = struct.Struct("<QIIB7x")
PAYLOAD_SIZE = 48
EVENT_SIZE = HEAD.size + PAYLOAD_SIZE   # 72
#: A ring buffer record: the kernel's 8-byte header (length, page offset), then the event.
RECORD_HEADER = struct.Struct("<II")
RECORD_SIZE = RECORD_HEADER.size + EVENT_SIZE


def _none_if_negative(v):
    return v if v >= 0 else None


def _close(conn, self_, gen, last_errno, cause, flags):
    known = flags & _SOCK_KNOWN
    return (conn, CAUSES.get(cause, ev.UNKNOWN), gen if cause == _GC and gen >= 0 else None, self_,
            bool(flags & _SOCK_PRESENT) if known else None, last_errno if known and last_errno >= 0 else None,
            bool(flags & _PEER_ENDED))


def _close_ret(conn, t0, sends, send_err, wire, tcp_from, tcp_to, fin_first):
    return (conn, WIRES.get(wire, ev.WIRE_UNOBSERVED), sends, t0, send_err, TCP_STATES.get(tcp_from),
            TCP_STATES.get(tcp_to), bool(fin_first) if tcp_from else None)


def _wire(conn, length, ret, fd, hlen, head):
    head = head[:hlen]
    return (conn, length, fd, head.hex(), length == 5 and head == ev.COM_QUIT_BYTES,
            len(head) >= 2 and 0x14 <= head[0] <= 0x17 and head[1] == 3, ret)


Kind = collections.namedtuple("Kind", "c_name k c_struct c_fields fmt keys row")
#: Per kind: its EV_* name, record kind, the C union member's struct and fields (in order),
#: their struct format, the record's JSON keys (after k, t, src, pid, tid) and the function
#: from the payload's fields to the keys' values.
KINDS = [
    Kind("EV_CONNECT", ev.BPF_CONNECT, "ev_connect", ("conn", "t0", "ok", "fd"), "QQIi",
         ("conn", "ok", "t0", "fd"), lambda conn, t0, ok, fd: (conn, bool(ok), t0, _none_if_negative(fd))),
    Kind("EV_CLOSE", ev.BPF_CLOSE, "ev_close", ("conn", "self", "gen", "last_errno", "cause", "flags"), "QQiiBB",
         ("conn", "cause", "gen", "self", "sock", "last_errno", "eof"), _close),
    Kind("EV_CLOSE_RET", ev.BPF_CLOSE_RET, "ev_close_ret",
         ("conn", "t0", "sends", "send_err", "wire", "tcp_from", "tcp_to", "fin_first"), "QQQiBBBB",
         ("conn", "wire", "sends", "t0", "send_err", "tcp_from", "tcp_to", "fin_first"), _close_ret),
    Kind("EV_WIRE", ev.BPF_WIRE, "ev_wire", ("conn", "len", "ret", "fd", "hlen", "head"), "QQqII16s",
         ("conn", "len", "fd", "head", "quit", "tls", "ret"), _wire),
    Kind("EV_GC_START", ev.BPF_GC_START, "ev_gc", ("collected", "gen"), "qi",
         ("gen",), lambda collected, gen: (_none_if_negative(gen),)),
    Kind("EV_GC_DONE", ev.BPF_GC_DONE, "ev_gc", ("collected", "gen"), "qi",
         ("collected", "gen"), lambda collected, gen: (collected, _none_if_negative(gen))),
    Kind("EV_FINALIZE", ev.BPF_FINALIZE, None, (), "", (), lambda: ()),
    Kind("EV_FORK", ev.BPF_FORK, "ev_fork", ("child",), "I", ("child",), lambda child: (child,)),
    Kind("EV_EXIT", ev.BPF_EXIT, None, (), "", (), lambda: ()),
    Kind("EV_PEER_END", ev.BPF_PEER_END, "ev_peer_end", ("conn", "ret", "fd", "op"), "QqIB",
         ("conn", "fd", "ret", "op"), lambda conn, ret, fd, op: (conn, fd, ret, OPS.get(op))),
]


def _json_value(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


class _Compiled:
    """One kind's decoder: payload Struct, dict keys, and its JSON line template."""

    def __init__(self, kind):
        self.kind = kind
        self.k = kind.k
        self.payload = struct.Struct("<" + kind.fmt)
        assert self.payload.size <= PAYLOAD_SIZE, kind
        self.keys = ("k", "t", "src", "pid", "tid") + kind.keys
        self.row = kind.row
        head = '{"k":%s,"t":%%d,"src":%s,"pid":%%d,"tid":%%d' % (json.dumps(kind.k), json.dumps(ev.SRC_BPF))
        self.template = head + "".join(',%s:%%s' % json.dumps(key) for key in kind.keys) + "}\n"

    def values(self, buf, off):
        """The JSON values of the record whose payload starts at ``off``."""
        return self.row(*self.payload.unpack_from(buf, off))


_BY_CODE = {EV[kind.c_name]: _Compiled(kind) for kind in KINDS}


def decode(buf, off=0):
    """The event at ``buf[off:off + EVENT_SIZE]`` as a bpf_* record dict, or None (unknown kind)."""
    ts, pid, tid, code = HEAD.unpack_from(buf, off)
    c = _BY_CODE.get(code)
    if c is None:
        return None
    return dict(zip(c.keys, (c.k, ts, ev.SRC_BPF, pid, tid) + c.values(buf, off + HEAD.size)))


def decode_records(data):
    """Every record of a run of whole ring buffer records of EVENT_SIZE, as dicts (Nones skipped)."""
    out = []
    for off in range(RECORD_HEADER.size, len(data), RECORD_SIZE):
        d = decode(data, off)
        if d is not None:
            out.append(d)
    return out


def lines(data, count_limit=None):
    """The hot path: a run of whole records of EVENT_SIZE -> (JSON text, counts per kind, connects ok, n).

    Stops at the first record whose length is not EVENT_SIZE (a discarded or foreign record)
    and returns how many it consumed; the caller walks the rest one by one.
    """
    out = []
    append = out.append
    counts = collections.Counter()
    connects_ok = 0
    by_code = _BY_CODE
    head = HEAD.unpack_from
    hdr = RECORD_HEADER.unpack_from
    n = 0
    connect = EV["EV_CONNECT"]
    for off in range(0, len(data) - RECORD_SIZE + 1, RECORD_SIZE):
        if hdr(data, off)[0] != EVENT_SIZE:
            break
        n += 1
        ts, pid, tid, code = head(data, off + RECORD_HEADER.size)
        c = by_code.get(code)
        if c is None:
            continue
        vals = c.values(data, off + RECORD_HEADER.size + HEAD.size)
        append(c.template % ((ts, pid, tid) + tuple(map(_json_value, vals))))
        counts[c.k] += 1
        if code == connect and vals[1]:
            connects_ok += 1
    return "".join(out), dict(counts), connects_ok, n


def pack(code, ts=0, pid=0, tid=0, **payload):
    """One struct event (for tests and fixtures): the C layout of kind ``code`` with ``payload``."""
    c = _BY_CODE[code]
    body = c.payload.pack(*(payload.get(name, b"" if name == "head" else 0) for name in c.kind.c_fields))
    return HEAD.pack(ts, pid, tid, code) + body + bytes(PAYLOAD_SIZE - len(body))
