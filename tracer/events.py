"""The one event schema shared by every source (agent, bpf, sampler, tracer) and the reader.

Stdlib only and Python 3.8-compatible: the in-process agent loads this file by path inside
the traced program's interpreter, whatever version that is.

An event is a flat JSON object, one per line in the capture, with these common keys:

    k    kind (one of the constants below)
    t    CLOCK_MONOTONIC nanoseconds (``now_ns``): the one clock of every source
    src  "agent" | "bpf" | "sampler" | "tracer"
    pid  process id (tgid), tid: native thread id (kernel tid), where they apply

``conn`` is always the ``MYSQL*`` address as an int: ``id(connection) + __basicsize__``
on the Python side, the first argument of ``mysql_close`` on the kernel side.
Keys may be added to a kind; a reader ignores keys it does not know.
"""

import re
import time

#: The capture's format name and version: the reader refuses any other version.
FORMAT = "trace-quit/capture"
VERSION = 1

#: The one clock: CLOCK_MONOTONIC in nanoseconds (bpf_ktime_get_ns() uses the same clock).
now_ns = time.monotonic_ns

# --- sources ------------------------------------------------------------------------
SRC_AGENT = "agent"
SRC_BPF = "bpf"
SRC_SAMPLER = "sampler"
SRC_TRACER = "tracer"

# --- causes of a COM_QUIT (contract: these names appear in reports) -----------------
EXPLICIT_CLOSE = "explicit_close"
REFCOUNT = "refcount"
GC = "gc"
SHUTDOWN = "shutdown"
NEVER_CLOSED = "never_closed"
SERVER = "server"
UNKNOWN = "unknown"
CAUSES = (EXPLICIT_CLOSE, REFCOUNT, GC, SHUTDOWN, NEVER_CLOSED, SERVER, UNKNOWN)

# --- wire confirmation of a COM_QUIT -----------------------------------------------
WIRE_CONFIRMED = "confirmed"
WIRE_NOT_SENT = "not_sent"
WIRE_ENCRYPTED = "encrypted"
WIRE_UNOBSERVED = "unobserved"
WIRE_STATES = (WIRE_CONFIRMED, WIRE_NOT_SENT, WIRE_ENCRYPTED, WIRE_UNOBSERVED)

#: The COM_QUIT packet: 3-byte payload length 1, sequence 0, command 0x01.
COM_QUIT_BYTES = b"\x01\x00\x00\x00\x01"

# --- event kinds: agent (inside the traced Python program) --------------------------
AGENT_START = "agent_start"      # python, executable, argv, basicsize, gc_thresholds, gc_enabled, ppid,
#                                  forked_from (parent pid: a forked child inherits its open connections)
MODULE = "module"                # name, version, file: MySQLdb / sqlalchemy when first imported
GC_START = "gc_start"            # gen, cid (per-process collection id), thread, site ("file:line")
#                                  thresholds: gc.get_threshold() in effect (platform, issue 14)
GC_STOP = "gc_stop"              # gen, cid, collected, uncollectable
#   gc_start/gc_stop are written for every generation-1/2 collection, and for a generation-0
#   one only when it destroyed a connection or engine (then with its own start time, so
#   order by ``t``, not by file position). All collections are counted in gc_counts.
GC_COUNTS = "gc_counts"          # by_gen {"0": n, "1": n, "2": n}: cumulative collections per process
CONN_OPEN = "conn_open"          # conn, host, port, db, user, unix_socket, stack, thread (name)
CONN_FAIL = "conn_fail"          # conn, error: connect raised (mysql_close later sends nothing)
CONN_CLOSE = "conn_close"        # conn, stack, thread: an explicit close() of an open connection
CONN_DESTROY = "conn_destroy"    # conn, cause (gc|refcount|shutdown), gen, cid: destroyed while open
ENGINE_CREATE = "engine_create"  # engine, site, pool_class, pool_size, max_overflow, url (no password)
ENGINE_DISPOSE = "engine_dispose"  # engine
ENGINE_DESTROY = "engine_destroy"  # engine, cause, gen, cid
POOL = "pool"                    # engine, ev (connect|checkout|checkin|close|detach|...), conn,
#                                  error ("Type: message", <= 200 chars) on invalidate/soft_invalidate
AGENT_LOST = "agent_lost"        # n: events the agent dropped because its channel was full

# --- event kinds: bpf (kernel side) --------------------------------------------------
# Added keys (tracer/bpf): bpf_connect.t0 and bpf_close_ret.t0 = entry time (ns) of the call;
# bpf_close.self = the _mysql.connection object's address (id(conn)), 0 when unknown, and
# gen is None unless cause == "gc" (None also when the build hides the generation);
# bpf_close_ret.wire = one of WIRE_STATES decided in the kernel from this thread's sends
# inside mysql_close ("not_sent" when nothing, or no COM_QUIT, was sent), .sends = their
# number; bpf_wire.conn, .fd, .quit (the 5 bytes are COM_QUIT), .tls (a TLS record header);
# bpf_gc_done.gen = the generation of the collection it ends (None when unknown).
# The server ending a connection first (cause "server"; tracer/bpf/probes.c says how):
# bpf_connect.fd = the connection's socket (the last connect() inside mysql_real_connect,
# None when unseen); bpf_close.sock = whether the client library still had the socket at
# mysql_close entry (False: it had dropped it after a failed read/write, so no COM_QUIT can
# be sent; None when unreadable), bpf_close.last_errno = the handle's net.last_errno then
# (2013 lost connection, 2006 gone away, ...; None when unknown); bpf_close_ret.send_err =
# errno of the first failed send inside mysql_close (32 EPIPE: the server had closed the
# socket; 0 none; a failed COM_QUIT is not "confirmed"), bpf_close_ret.tcp_from/tcp_to = the
# TCP state transition the client's close() made ("close_wait" -> "last_ack": the server's
# FIN was in; "established" -> "fin_wait1": the client closed first; None when not TCP or
# not seen), bpf_close_ret.fin_first = True when that FIN had come in before mysql_close was
# entered (the server ended it; False: it answered our COM_QUIT before we reached close(),
# or the client closed first; None when not TCP); bpf_peer_end (below) = the server's EOF
# or a reset on the socket, and bpf_close.eof = True when a bpf_peer_end for this connection
# came before this close; bpf_wire.ret = the send syscall's return value (bytes sent, or
# -errno: -32 EPIPE, -104 ECONNRESET).
BPF_CONNECT = "bpf_connect"      # conn, ok (mysql_real_connect returned non-NULL), t0, fd
BPF_CLOSE = "bpf_close"          # conn, cause, gen, self, sock, last_errno, eof: mysql_close entry with its native cause
BPF_CLOSE_RET = "bpf_close_ret"  # conn, wire, sends, t0, send_err, tcp_from, tcp_to, fin_first: mysql_close returned
BPF_WIRE = "bpf_wire"            # conn, fd, len, head (hex of first <=16 bytes), quit, tls, ret: a send during mysql_close
BPF_GC_START = "bpf_gc_start"    # gen (None when the build hides it)
BPF_GC_DONE = "bpf_gc_done"      # collected (-1 when unknown), gen
BPF_FINALIZE = "bpf_finalize"    # Py_FinalizeEx entered
BPF_FORK = "bpf_fork"            # child: a traced process forked
BPF_EXIT = "bpf_exit"            # a traced process exited
BPF_PEER_END = "bpf_peer_end"    # conn, fd, op ("read"|"write"), ret (0: EOF on a read; -104 ECONNRESET,
#                                  -32 EPIPE, -110 ETIMEDOUT): the first sign, on a live connection's
#                                  socket outside mysql_close, that the other end had closed it
BPF_STATS = "bpf_stats"          # emitted, dropped (cumulative in-kernel counters)
BPF_PROBES = "bpf_probes"        # the session's describe(): probes attached (file, symbol, offset, how),
#                                  what is missing and why. An event right after attach rather than a
#                                  header field, so the header is on disk before attaching begins and
#                                  a tracer killed while attaching still leaves a readable capture.

# --- event kinds: sampler and tracer -------------------------------------------------
SERVER_COUNT = "server_count"    # count: PROCESSLIST rows for the workload's user
CHILD_START = "child_start"      # the traced program was released to exec
CHILD_EXIT = "child_exit"        # status (exit code, 128+N for signal N)
TRACER_NOTE = "note"             # level, text: something the user should know (a probe missing)

#: The trailer's kind: its presence means the capture was finished cleanly.
TRAILER = "trailer"

#: The kinds the in-process agent may send through its channel; any other kind arriving there
#: is forged and rejected (tracer/channel.py).
AGENT_KINDS = frozenset((AGENT_START, MODULE, GC_START, GC_STOP, GC_COUNTS, CONN_OPEN, CONN_FAIL,
                         CONN_CLOSE, CONN_DESTROY, ENGINE_CREATE, ENGINE_DESTROY, ENGINE_DISPOSE,
                         POOL, AGENT_LOST))


class SchemaError(ValueError):
    """A record that does not match its kind's declared fields."""


def check(record):
    """Return ``record`` if it is a well-formed event, else raise ``SchemaError`` saying why.

    Interface only for now: the common keys. The per-kind field declarations extend it."""
    if not isinstance(record, dict):
        raise SchemaError("not a JSON object")
    kind = record.get("k")
    if not isinstance(kind, str):
        raise SchemaError("no kind")
    for key in ("t", "pid"):
        value = record.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise SchemaError("%s: %s is not an integer" % (kind, key))
    return record


def encode(event):
    """One event as a capture line (compact JSON, newline-terminated)."""
    import json

    return json.dumps(event, separators=(",", ":"), default=str) + "\n"


# Passwords never reach a capture, a log or a report: scrub them from anything that
# may carry one (argv, DSNs, connect() keyword arguments).
_URL_PASSWORD = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<post>@)")
_FLAG_PASSWORD = re.compile(r"^(?P<pre>--?(?:password|passwd|pwd)(?:=|$))(?P<pw>.*)$", re.IGNORECASE)
_SHORT_P = re.compile(r"^-p(?P<pw>.+)$")
REDACTED = "***"
SECRET_KEYS = frozenset(("password", "passwd", "pwd", "secret", "token"))


def redact(text):
    """Return ``text`` with any password in a URL or ``--password=`` flag replaced."""
    if not isinstance(text, str):
        return text
    text = _URL_PASSWORD.sub(lambda m: m.group("pre") + REDACTED + m.group("post"), text)
    m = _FLAG_PASSWORD.match(text)
    if m and m.group("pw"):
        return m.group("pre") + REDACTED
    if _SHORT_P.match(text):
        return "-p" + REDACTED
    return text


def redact_argv(argv):
    """Redact each argument, and the argument after a bare ``--password``/``-p`` flag."""
    out = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if isinstance(arg, str) and arg.lower() in ("--password", "--passwd", "-p", "--pwd"):
            hide_next = True
            out.append(arg)
            continue
        out.append(redact(arg))
    return out
