"""The one event schema shared by every source (agent, bpf, sampler, tracer) and the reader.

Stdlib only and Python 3.8-compatible: the in-process agent loads this file by path inside
the traced program's interpreter, whatever version that is.

An event is a flat JSON object, one per line in the capture, with these common keys:

    k    kind (one of the constants below)
    t    CLOCK_MONOTONIC nanoseconds (``now_ns``): the one clock of every source
    src  "agent" | "bpf" | "sampler" | "tracer"
    pid  process id (tgid), tid: native thread id (kernel tid), where they apply

``conn`` is the ``MYSQL*`` address as an int: ``id(connection) + __basicsize__`` on the
Python side, the first argument of ``mysql_close`` on the kernel side; for a PyMySQL
connection (no ``MYSQL*``) the inode of its socket, which both layers read.

Every kind's fields are declared once, below in ``KINDS`` (type, required, the capture
revision that added it), and enforced by ``check()``: by the capture reader on every record,
by the agent channel on the agent's kinds, by the synthetic captures of the tests. What each
field means is docs/capture-format.md, which tests/unit/test_docs.py checks against ``KINDS``
both ways (every declared field documented, every documented field declared). Keys may be added to a kind (declare
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
AGENT_START = "agent_start"
MODULE = "module"
GC_START = "gc_start"
GC_STOP = "gc_stop"
GC_COUNTS = "gc_counts"
CONN_OPEN = "conn_open"
CONN_FAIL = "conn_fail"
CONN_CLOSE = "conn_close"
CONN_DESTROY = "conn_destroy"
ENGINE_CREATE = "engine_create"
ENGINE_DISPOSE = "engine_dispose"
ENGINE_DESTROY = "engine_destroy"
POOL = "pool"
AGENT_LOST = "agent_lost"

# --- event kinds: bpf (kernel side) --------------------------------------------------
BPF_CONNECT = "bpf_connect"
BPF_CLOSE = "bpf_close"
BPF_CLOSE_RET = "bpf_close_ret"
BPF_WIRE = "bpf_wire"
BPF_GC_START = "bpf_gc_start"
BPF_GC_DONE = "bpf_gc_done"
BPF_FINALIZE = "bpf_finalize"
BPF_FORK = "bpf_fork"
BPF_EXIT = "bpf_exit"
BPF_PEER_END = "bpf_peer_end"
BPF_STATS = "bpf_stats"
BPF_PROBES = "bpf_probes"

# --- PyMySQL and the drivers nobody probes (tracer/agent/pymysql.py, tracer/bpf/probes/msock.h) ---
DRIVER_MYSQLCLIENT = "mysqlclient"
DRIVER_PYMYSQL = "pymysql"
# mysql-connector-python (pure and C extension), aiomysql, asyncmy (tracer/agent/connector.py,
# aio.py): keyed like PyMySQL (conn = the socket inode); conn_destroy.quit says whether the
# driver's destructor sent COM_QUIT (the C extension's does).
DRIVER_CONNECTOR = "mysql-connector"
DRIVER_CONNECTOR_C = "mysql-connector-c"
DRIVER_AIOMYSQL = "aiomysql"
DRIVER_ASYNCMY = "asyncmy"
DRIVERS = (DRIVER_MYSQLCLIENT, DRIVER_PYMYSQL, DRIVER_CONNECTOR, DRIVER_CONNECTOR_C, DRIVER_AIOMYSQL, DRIVER_ASYNCMY)
#: The drivers whose agent records are keyed by the socket's inode (paired with the kernel's
#: socket-level records by fd, analysis/aborted.pair_sockets).
SOCKET_DRIVERS = DRIVERS[1:]
#: The drivers that send COM_QUIT when a connection is destroyed open (libmysqlclient inside).
QUIT_ON_DESTROY = (DRIVER_MYSQLCLIENT, DRIVER_CONNECTOR_C)
#: The analysis' name for a connection only the kernel saw, on a MySQL socket outside the probed
#: library: PyMySQL or another client that does not go through libmysqlclient/libmariadb.
DRIVER_SOCKET = "socket"
BPF_SOCK_CONNECT = "bpf_sock_connect"
#: The sampler's reading of the server's counters at the start and at the end of the run
#: (the end one once they stopped moving): aborted_clients, aborted_connects, at ("start"|"end").
SERVER_STATUS = "server_status"
BPF_SOCK_CLOSE = "bpf_sock_close"

# --- event kinds: sampler and tracer -------------------------------------------------
SERVER_COUNT = "server_count"
CHILD_START = "child_start"
CHILD_EXIT = "child_exit"
TRACER_NOTE = "note"
TEST = "test"
#: A test's phases as the plugin writes them, and the session's own end (nodeid ""): its finish
#: hooks (``sessionfinish``) and the process's exit handlers (``exit``).
TEST_PHASES = ("setup", "call", "teardown", "finish", "sessionfinish", "exit")

#: The trailer's kind: its presence means the capture was finished cleanly.
TRAILER = "trailer"


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
    GC_COUNTS: (SRC_AGENT, _AGENT_COMMON + (F("by_gen", DICT), _opt("enabled", BOOL, since=2),
                                            _opt("final", BOOL, since=2))),
    CONN_OPEN: (SRC_AGENT, _AGENT_COMMON + (
        F("conn", INT), F("stack", LIST), _opt("thread", STR), _opt("host", STR + INT), _opt("port", INT + STR),
        _opt("db", STR + INT), _opt("user", STR + INT), _opt("unix_socket", STR + INT),
        _opt("driver", STR, since=2), _opt("fd", INT, null=True, since=2), _opt("obj", INT, since=2),
        _opt("before_attach", BOOL, since=2), _opt("origin", STR, since=2))),
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
    BPF_PROBES: (SRC_TRACER, _GLOBAL_COMMON + (F("probes", LIST), F("missing", LIST), _opt("targets", DICT))),
    # sampler and tracer
    # own_user: present when the sampler's account lacks PROCESS: the count is that user's own connections
    SERVER_COUNT: (SRC_SAMPLER, _GLOBAL_COMMON + (F("count", INT), _opt("own_user", STR, since=2))),
    SERVER_STATUS: (SRC_SAMPLER, _GLOBAL_COMMON + (F("at", STR, since=2), _opt("aborted_clients", INT, since=2),
                                                   _opt("aborted_connects", INT, since=2))),
    CHILD_START: (SRC_TRACER, _GLOBAL_COMMON + (F("pid", INT), _opt("attach_s", NUM), _opt("startup_s", NUM),
                                                _opt("attached", BOOL))),
    CHILD_EXIT: (SRC_TRACER, _GLOBAL_COMMON + (F("pid", INT), F("status", INT, null=True), _opt("attached", BOOL))),
    TRACER_NOTE: (SRC_TRACER, _GLOBAL_COMMON + (F("level", STR), F("text", STR), _opt("attach", DICT, since=2))),
    TEST: (SRC_TRACER, _GLOBAL_COMMON + (F("pid", INT, since=2), F("nodeid", STR, since=2),
                                         F("phase", STR, since=2))),
    TRAILER: (SRC_TRACER, (F("t", INT), F("counts", DICT), _opt("exit_status", INT, null=True),
                           _opt("lost", DICT), _opt("timings", DICT), _opt("bound", DICT, since=2))),
}

#: Packages whose frames are never the program's own line (the chains, the call sites): recognised
#: by module, wherever they are installed (a source checkout, site-packages, a zip). trace-quit's
#: own tracer and analysis, not its workloads (programs like the user's).
LIBRARY_PACKAGES = ("sqlalchemy", "MySQLdb", "pymysql", "mysql", "mariadb", "asyncmy", "aiomysql",
                    "pytest", "_pytest", "pluggy", "xdist", "execnet", "trace_quit.tracer", "trace_quit.analysis",
                    "_trace_quit_agent")

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

# --- the bounds of the agent's numbers ---------------------------------------------------
# The agent runs inside a program we do not trust: its integers are checked against what they
# can be, so a forged record cannot make a lost-event counter, a generation or a pid say
# anything (tests/unit/test_events.py, tests/security/). Every other integer of an agent kind
# is a count, an id or an address: 0 <= n < 2**63.
PID_MAX = 1 << 22                 # the kernel's PID_MAX_LIMIT: no pid or tid is larger
MAX_LOST_PER_RECORD = 10 ** 9     # agent_lost.n: the events one process can drop between two flushes
_INT_MAX = 1 << 63
_INT_BOUNDS = {
    "pid": (1, PID_MAX), "tid": (1, PID_MAX), "ppid": (0, PID_MAX), "forked_from": (0, PID_MAX),
    "gen": (0, 2), "max_overflow": (-1, _INT_MAX - 1), "port": (0, 65535), "fd": (-1, 1 << 31),
}
_KIND_INT_BOUNDS = {(AGENT_LOST, "n"): (1, MAX_LOST_PER_RECORD)}
#: An agent's conn_destroy/engine_destroy cause: CPython's three, PyMySQL's server end, and unknown
#: (the program removed the agent's gc callback).
AGENT_DESTROY_CAUSES = (GC, REFCOUNT, SHUTDOWN, SERVER, UNKNOWN)
GENERATIONS = ("0", "1", "2")


def check_bounds(record):
    """Return an agent ``record`` (already ``check``-ed) whose numbers are within their bounds,
    else raise ``SchemaError`` naming the first that is not."""
    kind = record["k"]
    for name, value in record.items():
        if type(value) is not int:
            continue
        lo, hi = _KIND_INT_BOUNDS.get((kind, name)) or _INT_BOUNDS.get(name) or (0, _INT_MAX - 1)
        if not lo <= value <= hi:
            raise SchemaError("%s: %s is %d, outside %d..%d" % (kind, name, value, lo, hi))
    if kind in (CONN_DESTROY, ENGINE_DESTROY) and record["cause"] not in AGENT_DESTROY_CAUSES:
        raise SchemaError("%s: cause %.40r is not one of %s" % (kind, record["cause"], ", ".join(AGENT_DESTROY_CAUSES)))
    if kind == GC_COUNTS:
        for gen, n in record["by_gen"].items():
            if gen not in GENERATIONS or type(n) is not int or not 0 <= n < _INT_MAX:
                raise SchemaError("gc_counts: by_gen has %.40r: %.40r (generations 0-2, counts)" % (gen, n))
    for name in ("counts", "gc_thresholds", "thresholds"):
        value = record.get(name)
        # gc.get_count()/get_threshold(): three integers (their sign is CPython's business).
        if isinstance(value, list) and (len(value) > 3 or any(type(n) is not int or not -_INT_MAX <= n < _INT_MAX
                                                              for n in value)):
            raise SchemaError("%s: %s is not three integers" % (kind, name))
    return record

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
        if kind == TEST and record["phase"] not in TEST_PHASES:
            raise SchemaError("test: phase is %r, not one of %s" % (record["phase"], ", ".join(TEST_PHASES)))
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
