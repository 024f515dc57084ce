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

Every kind's fields are declared below in ``KINDS`` (type, required, the capture revision
that added it) and enforced by ``check()``: by the capture reader on every record, by the
agent channel on the agent's kinds, by the synthetic captures of the tests.
docs/capture-format.md follows the table (tests/unit/test_docs.py). Keys may be added to a kind (declare
them, with the revision, in the kind's entry); a reader ignores keys it does not know.
"""

import time

#: The capture's format name and its schema revision (the header's ``version``). The writer
#: writes VERSION; the reader reads every revision in READABLE and says what an older one
#: lacks (``Field.since``), it never defaults a missing field silently.
FORMAT = "trace-quit/capture"
VERSION = 2
READABLE = (1, 2)

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
#                                  gc_generations (len(gc.get_stats()): with the thresholds, decides the collector),
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
ENGINE_CREATE = "engine_create"  # engine, site, pool_class, pool_size, max_overflow, url (no password),
#                                  chain (the program's frames from the call outwards, revision 2)
ENGINE_DISPOSE = "engine_dispose"  # engine
ENGINE_DESTROY = "engine_destroy"  # engine, cause, gen, cid
POOL = "pool"                    # engine, ev (connect|checkout|checkin|close|detach|...), conn,
#                                  error ("Type: message", <= 200 chars) on invalidate/soft_invalidate
AGENT_LOST = "agent_lost"        # n: events the agent dropped because its channel was full
# Added by trace-quit --pid (tracer/attach, tracer/agent/attach.py), agent kinds:
# agent_start.attached = True when the agent was injected into a running process, with
# .gc_counts (gc.get_count() at attach) and .gc_stats (gc.get_stats()); conn_open.before_attach
# = True and .origin = "before attach" for a connection alive at attach (stack [], no params;
# .host = get_host_info()); engine_create.site = "before attach" for an Engine alive then.
# Tracer kind: note.attach = {pid, method ("gdb"|"remote_exec"), stopped_s, waited_s, call_s,
# total_s} on the "agent injected" note, one per process.
# Agent fields added for issues 12/15 (tracer/agent/runtime.py):
#   gc_start.counts = [n0, n1, n2], gc.get_count() in the collection's "start" callback (what
#   set it off); agent_start.attached = True when loaded into a running program (--pid);
#   agent_lost also counts events dropped while its channel fd had been taken by the program.

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
BPF_CLOSE = "bpf_close"          # conn, cause, gen, self, sock, last_errno, eof: mysql_close entry (native cause)
BPF_CLOSE_RET = "bpf_close_ret"  # conn, wire, sends, t0, send_err, tcp_from, tcp_to, fin_first: mysql_close returned
BPF_WIRE = "bpf_wire"            # conn, fd, len, head (hex, first <=16 bytes), quit, tls, ret: a send in mysql_close
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

# --- PyMySQL and the drivers nobody probes (tracer/agent/pymysql.py, probes.c's socket part) ---
# PyMySQL (pure Python) has no MYSQL*: a PyMySQL connection's ``conn`` is the inode of its
# socket (os.fstat(fd).st_ino; the kernel reads the same number from the fd), which both
# layers see. Agent records about it carry ``driver`` (DRIVERS; absent = mysqlclient):
# conn_open.fd, .obj (id of the pymysql Connection); conn_close.quit = True (close() writes
# COM_QUIT); conn_destroy.quit = False (PyMySQL's __del__ closes the socket without it), and
# conn_destroy.cause may be "server" (PyMySQL dropped the socket after a failed read/write;
# .error = the exception's type, "eof" for a short read). module.driver names the driver a
# module is, module.probed = False for a MySQL driver whose connections the agent cannot see.
DRIVER_MYSQLCLIENT = "mysqlclient"
DRIVER_PYMYSQL = "pymysql"
DRIVERS = (DRIVER_MYSQLCLIENT, DRIVER_PYMYSQL)
#: The analysis' name for a connection only the kernel saw, on a MySQL socket outside the probed
#: library: PyMySQL or another client that does not go through libmysqlclient/libmariadb.
DRIVER_SOCKET = "socket"
# The kernel's view of MySQL sockets opened without the probed client library (PyMySQL, a
# statically linked client): a socket of a traced process on which the MySQL server greeting
# (protocol 10) was read. ``lib`` = True when the connect happened inside the probed library's
# mysql_real_connect (its connections are already bpf_connect's); ``ino`` = the socket inode.
BPF_SOCK_CONNECT = "bpf_sock_connect"  # conn (= ino), fd, ino, lib
#: The sampler's reading of the server's counters at the start and at the end of the run
#: (the end one once they stopped moving): aborted_clients, aborted_connects, at ("start"|"end").
SERVER_STATUS = "server_status"
BPF_SOCK_CLOSE = "bpf_sock_close"      # conn (= ino), fd, ino, lib, quit_sent, cause, gen, sends: the last
#                                        close() of such a socket; quit_sent = a COM_QUIT was written on it
#                                        before; cause as bpf_close (explicit_close when quit_sent, else gc
#                                        in a collection, shutdown after finalisation began, refcount)

# --- event kinds: sampler and tracer -------------------------------------------------
SERVER_COUNT = "server_count"    # count: PROCESSLIST rows for the workload's user
CHILD_START = "child_start"      # the traced program was released to exec
CHILD_EXIT = "child_exit"        # status (exit code, 128+N for signal N)
TRACER_NOTE = "note"             # level, text: something the user should know (a probe missing)

#: The trailer's kind: its presence means the capture was finished cleanly.
TRAILER = "trailer"
# trailer.bound (--max-capture, tracer/capture.py), present only when the bound was reached:
# {"max_bytes": n, "reached_t": ns, "not_written": {kind: n}, "closes_after": {"kernel":
# {"by_cause": {cause: n}, "gc_by_generation": {"2": n, "unknown": n}, "wire": {state: n}},
# "agent": {"by_cause": {...}, "gc_by_generation": {...}}}}: what was counted, not written.

class SchemaError(ValueError):
    """A record that does not match its kind's declared fields."""


# --- the executable schema -------------------------------------------------------------
# Every kind's fields, with their JSON types, whether they are required, and the capture
# revision that added them. A field added in revision N is required (when ``required``) only
# in captures of revision >= N; an older capture may lack it, and the reader says so
# (analysis/capture.py: Capture.lacks). Keys not declared here are allowed and ignored.
# The kernel's records are declared exactly as tracer/bpf/session.py's decoders write them.

INT = (int,)              # a JSON integer (never a bool: type() is compared, not isinstance)
BOOL = (bool,)
STR = (str,)
NUM = (int, float)
LIST = (list,)
DICT = (dict,)
NULL = type(None)


class Field(object):
    """One declared field: ``name``, JSON ``types``, ``required``, ``null`` allowed, ``since`` revision."""

    __slots__ = ("name", "types", "required", "null", "since")

    def __init__(self, name, types, required=True, null=False, since=1):
        self.name = name
        self.types = tuple(types) + ((NULL,) if null else ())
        self.required = required
        self.null = null
        self.since = since

    def __repr__(self):
        return "Field(%r, %s%s%s, since=%d)" % (
            self.name, "|".join(t.__name__ for t in self.types if t is not NULL),
            "" if self.required else ", optional", "|null" if self.null else "", self.since)


def F(name, types, required=True, null=False, since=1):
    return Field(name, types, required=required, null=null, since=since)


def _opt(name, types, null=False, since=1):
    return Field(name, types, required=False, null=null, since=since)


_AGENT_COMMON = (F("t", INT), F("src", STR), F("pid", INT), F("tid", INT))
_BPF_COMMON = (F("t", INT), F("src", STR), F("pid", INT), F("tid", INT))
_GLOBAL_COMMON = (F("t", INT), F("src", STR))

#: kind -> its source and fields (common keys included). ``k`` is implied.
KINDS = {
    # agent (inside the traced program; through the channel, so also the channel's validation)
    AGENT_START: (SRC_AGENT, _AGENT_COMMON + (
        F("ppid", INT), F("python", STR), F("executable", STR, null=True), F("argv", LIST), F("basicsize", INT),
        F("gc_thresholds", LIST), F("gc_enabled", BOOL), _opt("implementation", STR),
        _opt("forked_from", INT, null=True), _opt("attached", BOOL, since=2), _opt("gc_counts", LIST, since=2),
        _opt("gc_stats", LIST, since=2), _opt("gc_generations", INT, since=2))),
    MODULE: (SRC_AGENT, _AGENT_COMMON + (F("name", STR), F("version", STR, null=True),
                                         F("file", STR, null=True), _opt("driver", STR, since=2),
                                         _opt("probed", BOOL, since=2))),
    GC_START: (SRC_AGENT, _AGENT_COMMON + (F("gen", INT), F("cid", INT), F("site", STR), F("thread", STR),
                                           _opt("counts", LIST, since=2), _opt("thresholds", LIST, since=2),
                                           _opt("app_site", STR, since=2))),
    GC_STOP: (SRC_AGENT, _AGENT_COMMON + (F("gen", INT), F("cid", INT), F("collected", INT),
                                          F("uncollectable", INT))),
    GC_COUNTS: (SRC_AGENT, _AGENT_COMMON + (F("by_gen", DICT), _opt("enabled", BOOL, since=2))),
    CONN_OPEN: (SRC_AGENT, _AGENT_COMMON + (
        F("conn", INT), F("stack", LIST), _opt("thread", STR), _opt("host", STR + INT), _opt("port", INT + STR),
        _opt("db", STR + INT), _opt("user", STR + INT), _opt("unix_socket", STR + INT),
        _opt("driver", STR, since=2), _opt("fd", INT, null=True, since=2), _opt("obj", INT, since=2))),
    CONN_FAIL: (SRC_AGENT, _AGENT_COMMON + (F("conn", INT), F("error", STR))),
    CONN_CLOSE: (SRC_AGENT, _AGENT_COMMON + (F("conn", INT), F("stack", LIST), _opt("thread", STR),
                                             _opt("driver", STR, since=2), _opt("fd", INT, null=True, since=2),
                                             _opt("quit", BOOL, since=2))),
    CONN_DESTROY: (SRC_AGENT, _AGENT_COMMON + (F("conn", INT), F("cause", STR), F("gen", INT, null=True),
                                               F("cid", INT, null=True), _opt("driver", STR, since=2),
                                               _opt("fd", INT, null=True, since=2), _opt("quit", BOOL, since=2),
                                               _opt("error", STR, null=True, since=2))),
    ENGINE_CREATE: (SRC_AGENT, _AGENT_COMMON + (
        F("engine", INT), F("site", STR), F("pool_class", STR), _opt("url", STR), _opt("pool_size", INT),
        _opt("max_overflow", INT), _opt("chain", LIST, since=2))),
    ENGINE_DISPOSE: (SRC_AGENT, _AGENT_COMMON + (F("engine", INT),)),
    ENGINE_DESTROY: (SRC_AGENT, _AGENT_COMMON + (F("engine", INT), F("cause", STR), F("gen", INT, null=True),
                                                 F("cid", INT, null=True))),
    POOL: (SRC_AGENT, _AGENT_COMMON + (F("engine", INT), F("ev", STR), F("conn", INT, null=True),
                                       _opt("error", STR))),
    AGENT_LOST: (SRC_AGENT, _AGENT_COMMON + (F("n", INT),)),
    # kernel (tracer/bpf/session.py: decode_event and the fast-path line templates)
    BPF_CONNECT: (SRC_BPF, _BPF_COMMON + (F("conn", INT), F("ok", BOOL), F("t0", INT),
                                          F("fd", INT, null=True, since=2))),
    BPF_CLOSE: (SRC_BPF, _BPF_COMMON + (
        F("conn", INT), F("cause", STR), F("gen", INT, null=True), F("self", INT),
        F("sock", BOOL, null=True, since=2), F("last_errno", INT, null=True, since=2), F("eof", BOOL, since=2))),
    BPF_CLOSE_RET: (SRC_BPF, _BPF_COMMON + (
        F("conn", INT), F("wire", STR), F("sends", INT), F("t0", INT), F("send_err", INT, since=2),
        F("tcp_from", STR, null=True, since=2), F("tcp_to", STR, null=True, since=2),
        F("fin_first", BOOL, null=True, since=2))),
    BPF_WIRE: (SRC_BPF, _BPF_COMMON + (F("conn", INT), F("fd", INT), F("len", INT), F("head", STR),
                                       F("quit", BOOL), F("tls", BOOL), F("ret", INT, since=2))),
    BPF_GC_START: (SRC_BPF, _BPF_COMMON + (F("gen", INT, null=True),)),
    BPF_GC_DONE: (SRC_BPF, _BPF_COMMON + (F("collected", INT), F("gen", INT, null=True))),
    BPF_FINALIZE: (SRC_BPF, _BPF_COMMON),
    BPF_FORK: (SRC_BPF, _BPF_COMMON + (F("child", INT),)),
    BPF_EXIT: (SRC_BPF, _BPF_COMMON),
    BPF_PEER_END: (SRC_BPF, _BPF_COMMON + (F("conn", INT), F("fd", INT), F("ret", INT), F("op", STR, null=True))),
    BPF_STATS: (SRC_BPF, _GLOBAL_COMMON + (F("emitted", INT), F("dropped", INT))),
    # MySQL sockets outside the probed client library (PyMySQL, static clients): keyed by pid + fd
    # on disk; the analysis gives them their ``conn`` (analysis/aborted.py: pair_sockets).
    BPF_SOCK_CONNECT: (SRC_BPF, _BPF_COMMON + (F("fd", INT, since=2), F("lib", BOOL, since=2))),
    BPF_SOCK_CLOSE: (SRC_BPF, _BPF_COMMON + (
        F("fd", INT, since=2), F("lib", BOOL, since=2), F("cause", STR, since=2), F("gen", INT, null=True, since=2),
        F("quit_sent", BOOL, since=2), F("wire", STR, since=2), F("sends", INT, since=2),
        F("t_greeting", INT, since=2))),
    BPF_PROBES: (SRC_TRACER, _GLOBAL_COMMON + (F("probes", LIST), F("missing", LIST))),
    # sampler and tracer
    SERVER_COUNT: (SRC_SAMPLER, _GLOBAL_COMMON + (F("count", INT),)),
    SERVER_STATUS: (SRC_SAMPLER, _GLOBAL_COMMON + (F("at", STR, since=2), _opt("aborted_clients", INT, since=2),
                                                   _opt("aborted_connects", INT, since=2))),
    CHILD_START: (SRC_TRACER, _GLOBAL_COMMON + (F("pid", INT), _opt("attach_s", NUM), _opt("startup_s", NUM),
                                                _opt("attached", BOOL))),
    CHILD_EXIT: (SRC_TRACER, _GLOBAL_COMMON + (F("pid", INT), F("status", INT, null=True), _opt("attached", BOOL))),
    TRACER_NOTE: (SRC_TRACER, _GLOBAL_COMMON + (F("level", STR), F("text", STR))),
    TRAILER: (SRC_TRACER, (F("t", INT), F("counts", DICT), _opt("exit_status", INT, null=True),
                           _opt("lost", DICT), _opt("timings", DICT), _opt("bound", DICT, since=2))),
}

#: The sources a kind may come from (its declared source unless listed here). A kernel or
#: tracer kind stamped ``agent`` came through the agent's channel: it is forged, and refused.
SOURCES = {kind: (src,) for kind, (src, _) in KINDS.items() if kind != TRAILER}
SOURCES[TRACER_NOTE] = (SRC_TRACER, SRC_BPF)  # the kernel layer's decode errors are notes too

#: The header (the first line; it has no ``k``): what tracer/capture.py and tracer/record.py write.
#: The writer always writes them all but ``targets``/``dsn``/``attached_pid``; only the three
#: the reader cannot do without are required, the others are type-checked when present.
HEADER_FIELDS = (
    F("format", STR), F("version", INT), F("t", INT), _opt("clock", STR), _opt("kernel", STR),
    _opt("machine", STR), _opt("argv", LIST), _opt("tracer", DICT), _opt("child_pid", INT), _opt("uid", INT),
    _opt("gid", INT), _opt("user", STR), _opt("cwd", STR), _opt("layers", DICT), _opt("targets", DICT),
    _opt("dsn", STR), _opt("attached_pid", INT),
)

#: The kinds the in-process agent may send through its channel; any other kind arriving there
#: is forged and rejected (tracer/channel.py).
AGENT_KINDS = frozenset(k for k, (src, _) in KINDS.items() if src == SRC_AGENT)

_COMPILED = {}


def _compiled(kind, revision):
    """(name, types, required-in-this-revision) per field of ``kind``, cached."""
    key = (kind, revision)
    fields = _COMPILED.get(key)
    if fields is None:
        decl = HEADER_FIELDS if kind is None else KINDS[kind][1]
        fields = _COMPILED[key] = tuple((f.name, f.types, f.required and f.since <= revision) for f in decl)
    return fields


def _check_fields(record, kind, revision, label):
    for name, types, required in _compiled(kind, revision):
        if name in record:
            if type(record[name]) not in types:
                raise SchemaError("%s: %s is %s, not %s" % (
                    label, name, type(record[name]).__name__ if record[name] is not None else "null",
                    "|".join("null" if t is NULL else t.__name__ for t in types)))
        elif required:
            raise SchemaError("%s: %s is missing" % (label, name))
    return record


def check(record, revision=VERSION):
    """Return ``record`` if it is a well-formed event of a capture of ``revision``, else raise
    ``SchemaError`` saying why. A kind not declared here only needs ``k``, an integer ``t`` and,
    when present, an integer ``pid``: readers skip kinds they do not know."""
    if not isinstance(record, dict):
        raise SchemaError("not a JSON object")
    kind = record.get("k")
    if not isinstance(kind, str):
        raise SchemaError("no kind")
    if kind in KINDS:
        _check_fields(record, kind, revision, kind)
        sources = SOURCES.get(kind)
        if sources is not None and record["src"] not in sources:
            raise SchemaError("%s: src is %r, not %s" % (kind, record["src"], " or ".join(sources)))
        if kind == TRAILER and "src" in record:
            # The writer's trailer has no source; one with a source came through a channel.
            raise SchemaError("trailer: has a src (%r): not the tracer's own" % (record["src"],))
        return record
    if type(record.get("t")) is not int:
        raise SchemaError("%s: t is not an integer" % kind)
    if "pid" in record and type(record["pid"]) is not int:
        raise SchemaError("%s: pid is not an integer" % kind)
    return record


def check_header(header, revision=None):
    """Return ``header`` if it is a well-formed capture header, else raise ``SchemaError``."""
    if not isinstance(header, dict):
        raise SchemaError("not a JSON object")
    if revision is None:
        revision = header.get("version") if type(header.get("version")) is int else VERSION
    return _check_fields(header, None, revision, "header")


def added_after(kind, revision):
    """The fields of ``kind`` that captures of ``revision`` may lack (added by a later revision)."""
    if kind not in KINDS:
        return ()
    # Only required fields: an optional one (PyMySQL's ``driver``) may be absent in any revision.
    return tuple(f.name for f in KINDS[kind][1] if f.since > revision and f.required)


def encode(event):
    """One event as a capture line (compact JSON, newline-terminated)."""
    import json

    return json.dumps(event, separators=(",", ":"), default=str) + "\n"


# --- redaction: tracer/secrets.py, re-exported here for the agent (it loads this file by path) ---
def _load_secrets():
    if __name__ == "trace_quit.tracer.events":  # the tracer: the package is importable
        from trace_quit.tracer import secrets
        return secrets
    # The agent, inside the traced program: never import our package there, load the file.
    import importlib.util
    import os
    import sys

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "secrets.py")
    spec = importlib.util.spec_from_file_location("_trace_quit_secrets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["_trace_quit_secrets"] = module
    return module


_secrets = _load_secrets()
REDACTED = _secrets.REDACTED
SECRET_KEYS = _secrets.SECRET_KEYS
redact = _secrets.redact
redact_argv = _secrets.redact_argv
