"""Kernel records (probes.c's ``struct event``) to bpf_* records: the one decoder.

One table, ``KINDS``, says for each event kind its code (``EV_*`` in probes.c), the layout of
its payload (the member of the C union, field by field), and how each JSON key of the record
is made from the payload. Both paths are generated from it (Python source, compiled once at
import): ``decode`` (one record to a dict) and ``lines`` (a batch of ring buffer records
straight to JSON lines in one loop, the hot path), so they cannot disagree. The JSON keys
are those of tracer/events.py. tests/unit/test_bpf_decode.py checks the codes and layouts
against probes.c and both paths against each other.
"""

import collections
import json
import struct

from trace_quit.tracer import events as ev

# --- codes shared with probes.c (#define NAME value) ----------------------------------------
EV = {"EV_CONNECT": 1, "EV_CLOSE": 2, "EV_CLOSE_RET": 3, "EV_WIRE": 4, "EV_GC_START": 5, "EV_GC_DONE": 6,
      "EV_FINALIZE": 7, "EV_FORK": 8, "EV_EXIT": 9, "EV_PEER_END": 10, "EV_SOCK_CONNECT": 11,
      "EV_SOCK_CLOSE": 12}
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


# --- layout -----------------------------------------------------------------------------------
#: struct event's head: ts, pid, tid, kind, 7 bytes of padding; the union follows at 24.
HEAD = struct.Struct("<QIIB7x")
PAYLOAD_SIZE = 48
EVENT_SIZE = HEAD.size + PAYLOAD_SIZE   # 72
#: A ring buffer record: the kernel's 8-byte header (length, page offset), then the event.
RECORD_HEADER = struct.Struct("<II")
RECORD_SIZE = RECORD_HEADER.size + EVENT_SIZE


Kind = collections.namedtuple("Kind", "c_name k c_struct c_fields fmt keys")
#: Per kind: its EV_* name, record kind, the C union member's struct and fields (in order)
#: with their struct format, and the record's keys after k, t, src, pid, tid: (JSON key,
#: JSON type, Python expression over the C fields). Both decoders are generated from these.
KINDS = [
    Kind("EV_CONNECT", ev.BPF_CONNECT, "ev_connect", ("conn", "t0", "ok", "fd"), "QQIi", (
        ("conn", "int", "conn"),
        ("ok", "bool", "ok != 0"),
        ("t0", "int", "t0"),
        ("fd", "int?", "fd if fd >= 0 else None"))),
    Kind("EV_CLOSE", ev.BPF_CLOSE, "ev_close", ("conn", "self", "gen", "last_errno", "cause", "flags"), "QQiiBB", (
        ("conn", "int", "conn"),
        ("cause", "str", "CAUSES.get(cause, UNKNOWN)"),
        ("gen", "int?", "gen if cause == CAUSE_GC and gen >= 0 else None"),
        ("self", "int", "self"),
        ("sock", "bool?", "(flags & SOCK_PRESENT != 0) if flags & SOCK_KNOWN else None"),
        ("last_errno", "int?", "last_errno if flags & SOCK_KNOWN and last_errno >= 0 else None"),
        ("eof", "bool", "flags & PEER_ENDED != 0"))),
    Kind("EV_CLOSE_RET", ev.BPF_CLOSE_RET, "ev_close_ret",
         ("conn", "t0", "sends", "send_err", "wire", "tcp_from", "tcp_to", "fin_first"), "QQQiBBBB", (
             ("conn", "int", "conn"),
             ("wire", "str", "WIRES.get(wire, WIRE_UNOBSERVED)"),
             ("sends", "int", "sends"),
             ("t0", "int", "t0"),
             ("send_err", "int", "send_err"),
             ("tcp_from", "str?", "TCP_STATES.get(tcp_from)"),
             ("tcp_to", "str?", "TCP_STATES.get(tcp_to)"),
             ("fin_first", "bool?", "(fin_first != 0) if tcp_from else None"))),
    Kind("EV_WIRE", ev.BPF_WIRE, "ev_wire", ("conn", "len", "ret", "fd", "hlen", "head"), "QQqII16s", (
        ("conn", "int", "conn"),
        ("len", "int", "len"),
        ("fd", "int", "fd"),
        ("head", "str", "head[:hlen].hex()"),
        ("quit", "bool", "len == 5 and head[:hlen] == COM_QUIT"),
        ("tls", "bool", "hlen >= 2 and 0x14 <= head[0] <= 0x17 and head[1] == 3"),
        ("ret", "int", "ret"))),
    Kind("EV_GC_START", ev.BPF_GC_START, "ev_gc", ("collected", "gen"), "qi", (
        ("gen", "int?", "gen if gen >= 0 else None"),)),
    Kind("EV_GC_DONE", ev.BPF_GC_DONE, "ev_gc", ("collected", "gen"), "qi", (
        ("collected", "int", "collected"),
        ("gen", "int?", "gen if gen >= 0 else None"))),
    Kind("EV_FINALIZE", ev.BPF_FINALIZE, None, (), "", ()),
    Kind("EV_FORK", ev.BPF_FORK, "ev_fork", ("child",), "I", (("child", "int", "child"),)),
    Kind("EV_EXIT", ev.BPF_EXIT, None, (), "", ()),
    Kind("EV_PEER_END", ev.BPF_PEER_END, "ev_peer_end", ("conn", "ret", "fd", "op"), "QqIB", (
        ("conn", "int", "conn"),
        ("fd", "int", "fd"),
        ("ret", "int", "ret"),
        ("op", "str?", "OPS.get(op)"))),
    # MySQL sockets outside the client library (PyMySQL): keyed by pid + fd; the analysis
    # pairs them with the agent's records (analysis/aborted.py: pair_sockets).
    Kind("EV_SOCK_CONNECT", ev.BPF_SOCK_CONNECT, "ev_sock", ("t_greeting", "fd", "sends", "gen", "cause", "wire"),
         "QIIiBB", (
             ("fd", "int", "fd"),
             ("lib", "bool", "False"))),
    Kind("EV_SOCK_CLOSE", ev.BPF_SOCK_CLOSE, "ev_sock", ("t_greeting", "fd", "sends", "gen", "cause", "wire"),
         "QIIiBB", (
             ("fd", "int", "fd"),
             ("lib", "bool", "False"),
             ("cause", "str", "CAUSES.get(cause, UNKNOWN)"),
             ("gen", "int?", "gen if cause == CAUSE_GC and gen >= 0 else None"),
             ("quit_sent", "bool", "wire == WIRE_CONFIRMED_CODE"),
             ("wire", "str", "WIRES.get(wire, WIRE_UNOBSERVED)"),
             ("sends", "int", "sends"),
             ("t_greeting", "int", "t_greeting"))),
]

#: How each JSON type is written into a line (``v`` is the value; strings are identifiers
#: from the tables above or hex, which need no escaping).
_LITERAL = {"int": "{v}", "int?": '("null" if {v} is None else {v})', "bool": '("true" if {v} else "false")',
            "bool?": '("null" if {v} is None else "true" if {v} else "false")', "str": "{v}",
            "str?": '("null" if {v} is None else \'"\' + {v} + \'"\')'}
_NAMES = {"CAUSES": CAUSES, "WIRES": WIRES, "TCP_STATES": TCP_STATES, "OPS": OPS, "UNKNOWN": ev.UNKNOWN,
          "WIRE_UNOBSERVED": ev.WIRE_UNOBSERVED, "CAUSE_GC": CAUSE["CAUSE_GC"], "COM_QUIT": ev.COM_QUIT_BYTES,
          "SOCK_PRESENT": CLOSE_FLAGS["CLOSE_SOCK_PRESENT"], "SOCK_KNOWN": CLOSE_FLAGS["CLOSE_SOCK_KNOWN"],
          "PEER_ENDED": CLOSE_FLAGS["CLOSE_PEER_ENDED"], "WIRE_CONFIRMED_CODE": WIRE["WIRE_CONFIRMED"]}


class _Compiled:
    """One kind's dict decoder ``record``, generated from its KINDS entry (taking the whole ring
    buffer record's fields as ``rec`` unpacks them), and its JSON line ``template`` (used by
    the generated ``lines``)."""

    def __init__(self, kind):
        self.kind = kind
        self.k = kind.k
        self.payload = struct.Struct("<" + kind.fmt)
        assert self.payload.size <= PAYLOAD_SIZE, kind
        #: The whole ring buffer record: kernel header, event head, this kind's payload.
        self.rec = struct.Struct("<IIQIIB7x" + kind.fmt)
        self.keys = ("k", "t", "src", "pid", "tid") + tuple(key for key, _, _ in kind.keys)
        head = '{"k":%s,"t":%%s,"src":%s,"pid":%%s,"tid":%%s' % (json.dumps(kind.k), json.dumps(ev.SRC_BPF))
        # Strings ("str") are quoted by the template itself: one concatenation less per field.
        template = head + "".join((',%s:"%%s"' if typ == "str" else ",%s:%%s") % json.dumps(key)
                                  for key, typ, _ in kind.keys) + "}\n"
        args = ", ".join(("_hl", "_pg", "ts", "pid", "tid", "_code") + kind.c_fields)
        body = "".join("    v%d = %s\n" % (i, expr) for i, (_, _, expr) in enumerate(kind.keys))
        items = "".join(", %s: v%d" % (json.dumps(key), i) for i, (key, _, _) in enumerate(kind.keys))
        src = ("def record(%s):\n%s    return {'k': K, 't': ts, 'src': SRC, 'pid': pid, 'tid': tid%s}\n"
               % (args, body, items))
        names = dict(_NAMES, K=kind.k, SRC=ev.SRC_BPF)
        exec(compile(src, "<decode %s>" % kind.c_name, "exec"), names)
        self.source, self.template, self.args = src, template, args.split(", ")
        self.record = names["record"]


_BY_CODE = {EV[kind.c_name]: _Compiled(kind) for kind in KINDS}
_KIND_AT = RECORD_HEADER.size + 16    # the kind byte, in a ring buffer record


def decode(buf, off=0):
    """The event at ``buf[off:off + EVENT_SIZE]`` as a bpf_* record dict, or None (unknown kind)."""
    c = _BY_CODE.get(buf[off + 16])
    if c is None:
        return None
    return c.record(*c.rec.unpack_from(bytes(RECORD_HEADER.size) + bytes(buf[off:off + EVENT_SIZE])))


#: Kinds in the order the generated fast path tests them: the frequent ones first.
_HOT = ("EV_CLOSE", "EV_CLOSE_RET", "EV_WIRE", "EV_CONNECT", "EV_GC_START", "EV_GC_DONE")


def _generate_lines():
    """The hot path as one generated function: every kind's line inline (no call per record)."""
    order = [k for k in _HOT] + [k.c_name for k in KINDS if k.c_name not in _HOT]
    names = dict(_NAMES, EVENT_SIZE=EVENT_SIZE, KIND_AT=_KIND_AT, length=RECORD_HEADER.unpack_from)
    src = ["def lines(data, end):",
           "    out = []", "    append = out.append", "    n = 0",
           "    counts = [0] * %d" % (max(EV.values()) + 1), "    connects_ok = 0",
           "    for off in range(0, end, %d):" % RECORD_SIZE,
           "        code = data[off + KIND_AT]"]
    for i, c_name in enumerate(order):
        c = _BY_CODE[EV[c_name]]
        code = EV[c_name]
        names["unpack_%d" % code] = c.rec.unpack_from
        names["TEMPLATE_%d" % code] = c.template
        src.append("        %s code == %d:" % ("if" if i == 0 else "elif", code))
        src.append("            (%s) = unpack_%d(data, off)" % (", ".join(c.args), code))
        src += ["            if _hl != EVENT_SIZE:", "                break"]
        src += ["            v%d = %s" % (j, expr) for j, (_, _, expr) in enumerate(c.kind.keys)
                if expr not in c.kind.c_fields]
        lits = "".join(", " + _LITERAL[typ].format(v=expr if expr in c.kind.c_fields else "v%d" % j)
                       for j, (_, typ, expr) in enumerate(c.kind.keys))
        src.append("            append(TEMPLATE_%d %% (ts, pid, tid%s))" % (code, lits))
        src.append("            counts[code] += 1")
        if c_name == "EV_CONNECT":
            src.append("            connects_ok += v1")
    src += ["        elif length(data, off)[0] != EVENT_SIZE:", "            break",
            "        n += 1", "    return out, counts, connects_ok, n", ""]
    exec(compile("\n".join(src), "<decode lines>", "exec"), names)
    return names["lines"], "\n".join(src)


_lines, LINES_SOURCE = _generate_lines()


def lines(data):
    """The hot path: a run of whole records of EVENT_SIZE -> (JSON text, counts per kind, connects ok, n).

    Stops at the first record whose length is not EVENT_SIZE (a discarded or foreign record)
    and returns how many it consumed; the caller walks the rest one by one. Records of an
    unknown kind are consumed and skipped.
    """
    out, counts, connects_ok, n = _lines(data, len(data) - RECORD_SIZE + 1)
    return "".join(out), {_BY_CODE[code].k: m for code, m in enumerate(counts) if m}, int(connects_ok), n


def pack(code, ts=0, pid=0, tid=0, **payload):
    """One struct event (for tests and fixtures): the C layout of kind ``code`` with ``payload``."""
    c = _BY_CODE[code]
    body = c.payload.pack(*(payload.get(name, b"" if name == "head" else 0) for name in c.kind.c_fields))
    return HEAD.pack(ts, pid, tid, code) + body + bytes(PAYLOAD_SIZE - len(body))
