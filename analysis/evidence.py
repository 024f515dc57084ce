"""The evidence a join collects: connection lives, Engine lives, collections (analysis/join.py).

A ``Life`` keeps what each layer saw of one connection, nothing else; ``analysis/attribute.py``
decides its cause from it (``Verdict``) and hands the views an ``End``: the life and its verdict.
"""

import re
from typing import Any, Dict, List, Optional, Tuple

from trace_quit.tracer import events as ev

#: MySQL/MariaDB error codes that mean the server ended the connection first. The client
#: library detects the first three itself on the socket (and drops the socket: its later
#: mysql_close sends nothing); the server sends the others in an error packet before it
#: closes (the client keeps its socket, so its later COM_QUIT still goes out, unread).
CLIENT_DETECTED = {2006: "server has gone away", 2013: "lost connection during query",
                   2055: "lost connection (system error)"}
SERVER_SENT = {4031: "disconnected for inactivity (wait_timeout)", 1927: "connection was killed",
               1053: "server shutdown"}
SERVER_GONE_CODES = {**CLIENT_DETECTED, **SERVER_SENT}

# "OperationalError: (2013, 'Lost connection…')", also wrapped by SQLAlchemy:
# "OperationalError: (MySQLdb.OperationalError) (2006, 'Server has gone away')".
_ERROR_CODE = re.compile(r"\((\d{4}),\s*[\'\"]")
_SERVER_GONE_TEXT = (
    (re.compile(r"server has gone away", re.IGNORECASE), 2006),
    (re.compile(r"lost connection to (?:mysql )?server during query", re.IGNORECASE), 2013),
    (re.compile(r"disconnected by the server because of inactivity", re.IGNORECASE), 4031),
    (re.compile(r"connection was killed", re.IGNORECASE), 1927),
    (re.compile(r"server shutdown in progress", re.IGNORECASE), 1053),
)


def server_gone_code(error: Any) -> Optional[int]:
    """The server-gone error code an invalidation error names, else None."""
    if not isinstance(error, str):
        return None
    for m in _ERROR_CODE.finditer(error):
        code = int(m.group(1))
        if code in SERVER_GONE_CODES:
            return code
    if _ERROR_CODE.search(error):
        return None  # another error code: not a server-gone error, whatever the text says
    for pattern, code in _SERVER_GONE_TEXT:
        if pattern.search(error):
            return code
    return None

#: errno of a send that found the peer gone (EPIPE, ECONNRESET), as negative return values.
SEND_PEER_GONE = {-32: "EPIPE", -104: "ECONNRESET"}
#: Any errno the kernel reports for a socket the other end ended (bpf_peer_end.ret).
PEER_END_ERRNO = {0: "EOF", -32: "EPIPE", -104: "ECONNRESET", -110: "ETIMEDOUT"}


class Life:
    """One connection, from its open to its COM_QUIT (or the end of its process)."""

    __slots__ = (
        "pid", "conn", "t_open", "t_start", "agent_open", "bpf_open", "failed", "engine", "checkouts",
        "pool_end", "server_error", "server_code", "agent_end", "bpf_end", "bpf_ret", "wire", "send_errors",
        "eof", "peer_end", "agent_collection", "bpf_collection", "prev", "inherited_from", "root",
    )

    def __init__(self, pid: int, conn: int):
        self.pid = pid
        self.conn = conn
        self.t_open: Optional[int] = None
        self.agent_open: Optional[Any] = None   # conn_open / conn_fail event
        self.bpf_open: Optional[Any] = None     # bpf_connect event
        self.failed = False                      # the connect failed: its mysql_close sends nothing
        self.engine: Optional["EngineLife"] = None
        self.checkouts = 0
        self.t_start: Optional[int] = None       # first known moment (open, fork); None: before the capture
        self.pool_end: Optional[str] = None      # last pool event that ends a connection (close, ...)
        self.server_error: Optional[str] = None  # a server-gone error seen before the client's close
        self.server_code: Optional[int] = None   # its error code (SERVER_GONE_CODES)
        self.agent_end: Optional[Any] = None    # conn_close / conn_destroy event
        self.bpf_end: Optional[Any] = None      # bpf_close event
        self.bpf_ret: Optional[Any] = None      # bpf_close_ret event (carries the kernel's wire verdict)
        self.wire: Optional[List[str]] = None    # heads of sends seen inside mysql_close
        self.send_errors: Optional[List[int]] = None  # failed sends' return values (-errno), when recorded
        self.eof = False                         # the kernel saw the peer's EOF/reset before the close
        self.peer_end: Optional[Any] = None     # that bpf_peer_end event, when recorded
        self.agent_collection: Optional["Collection"] = None
        self.bpf_collection: Optional["Collection"] = None
        self.prev: Optional["Life"] = None       # the previous life at the same (pid, MYSQL*)
        self.inherited_from: Optional["Life"] = None  # the parent's life this fork copy was taken from
        self.root: Optional["Life"] = None       # a fork copy's family root: the life that opened it

    @property
    def ended(self) -> bool:
        """True once either layer saw its close."""
        return self.agent_end is not None or self.bpf_end is not None

    @property
    def opened(self) -> bool:
        """True when either layer saw it open (successfully or not)."""
        return self.agent_open is not None or self.bpf_open is not None

    @property
    def t_closed(self) -> Optional[int]:
        """When the first layer saw its close (None while open)."""
        ts = [e.t for e in (self.agent_end, self.bpf_end) if e is not None]
        return min(ts) if ts else None

    @property
    def family(self) -> "Life":
        """The life that opened the server connection this one is a handle on (itself unless a fork copy)."""
        return self.root if self.root is not None else self

    @property
    def driver(self) -> str:
        """The client library: the agent's ``driver``, "socket" for a kernel-only non-libmysqlclient socket."""
        for e in (self.agent_open, self.agent_end):
            if e is not None and e.k != ev.CONN_FAIL:
                d = e.driver
                if isinstance(d, str) and d in ev.DRIVERS:
                    return d
        for e in (self.bpf_open, self.bpf_end):
            if e is not None and e.k in (ev.BPF_SOCK_CONNECT, ev.BPF_SOCK_CLOSE):
                return ev.DRIVER_SOCKET  # the kernel alone: a MySQL socket outside libmysqlclient
        return ev.DRIVER_MYSQLCLIENT

    def open_event(self) -> Optional[dict]:
        """The richest open event: the agent's (stack, host) else the kernel's."""
        return self.agent_open or self.bpf_open


class EngineLife:
    """One SQLAlchemy Engine (and its pool), from create_engine() to its end."""

    __slots__ = ("pid", "engine", "t_create", "site", "pool_class", "pool_size", "max_overflow",
                 "url", "disposed", "t_dispose", "destroy", "destroy_collection", "connections",
                 "t_end", "inherited_from", "chain")

    def __init__(self, pid: int, engine: int, t: Optional[int], e: Optional[Any]):
        self.pid = pid
        self.engine = engine
        self.t_create = t
        # e: the engine_create record (None: created before the capture, or a fork's copy)
        self.site: Optional[str] = e.site if e is not None else None
        self.chain: List[str] = [f for f in (e.chain if e is not None else None) or () if isinstance(f, str)]
        self.pool_class: Optional[str] = e.pool_class if e is not None else None
        self.pool_size: Optional[int] = e.pool_size if e is not None else None
        self.max_overflow: Optional[int] = e.max_overflow if e is not None else None
        self.url: Optional[str] = e.url if e is not None else None
        self.disposed = 0
        self.t_dispose: Optional[int] = None
        self.destroy: Optional[Any] = None
        self.destroy_collection: Optional["Collection"] = None
        self.connections = 0
        self.t_end: Optional[int] = None
        self.inherited_from: Optional["EngineLife"] = None  # a forked child's copy of the parent's Engine

    @classmethod
    def copy_for(cls, pid: int, parent: "EngineLife") -> "EngineLife":
        """A forked child's copy of ``parent``: same call site and pool, not a new create_engine()."""
        el = cls(pid, parent.engine, None, None)
        el.site, el.pool_class, el.pool_size = parent.site, parent.pool_class, parent.pool_size
        el.chain = parent.chain
        el.max_overflow, el.url = parent.max_overflow, parent.url
        el.inherited_from = parent
        return el


class Collection:
    """One garbage collection on one thread, from the agent's gc.callbacks or the kernel's probes."""

    __slots__ = ("src", "pid", "tid", "cid", "gen", "t_start", "t_stop", "thread", "site",
                 "collected", "uncollectable", "twin", "engines_destroyed")

    def __init__(self, src: str, pid: int, tid: Optional[int], t: int, e: Any):
        agent = e.k == ev.GC_START                  # else the kernel's bpf_gc_start
        self.src = src
        self.pid = pid
        self.tid = tid
        self.cid: Optional[int] = e.cid if agent else None  # the agent's collection id
        self.gen: Optional[int] = e.gen
        self.t_start = t
        self.t_stop: Optional[int] = None
        self.thread: Optional[str] = e.thread if agent else None
        # The program's own frame when the agent found one above a library frame (gc_start.app_site).
        self.site: Optional[str] = (e.app_site or e.site) if agent else None
        self.collected: Optional[int] = None
        self.uncollectable: Optional[int] = None
        self.twin: Optional["Collection"] = None  # the same collection seen by the other layer
        self.engines_destroyed = 0


class Joined:
    """Everything the join found, in time order, plus the capture-wide facts."""

    def __init__(self):
        self.lives: List[Life] = []
        self.engines: List[EngineLife] = []
        self.collections: List[Collection] = []        # agent and kernel, start order
        self.server_counts: List[Tuple[int, int]] = []
        self.server_own_user: Optional[str] = None  # the count covers this user's connections only
        self.notes: List[Tuple[int, str, str]] = []    # (t, level, text)
        self.sources: Dict[str, int] = {}               # events per src
        self.kinds: Dict[str, int] = {}                 # events per kind
        self.t0: Optional[int] = None                   # child_start
        self.t_first: Optional[int] = None
        self.t_last: Optional[int] = None
        self.root_pid: Optional[int] = None
        self.child_exit: Optional[Tuple[int, Any]] = None   # (t, status)
        self.exits: Dict[int, int] = {}                 # pid -> t of bpf_exit
        self.finalize: Dict[int, int] = {}              # pid -> t of Py_FinalizeEx
        self.pids: Dict[int, str] = {}                  # pid -> python version (agent_start)
        self.agent_final: set = set()                   # pids whose agent wrote its exit flush
        self.gc_disabled: set = set()                   # pids whose agent_start saw gc.isenabled() false
        self.modules: Dict[str, str] = {}               # name -> version
        self.agent_lost = 0
        self.bpf_dropped = 0
        self.gc_pids_agent = set()                      # pids whose agent reported collections
        self.gc_counts: Dict[int, Dict[str, int]] = {}  # pid -> latest cumulative counts by generation
        self.thread_names: Dict[Tuple[int, int], str] = {}  # (pid, tid) -> thread name
        self.probes: Optional[Any] = None              # the bpf_probes event: attached and missing probes
        self.forked_from: Dict[int, int] = {}           # child pid -> parent pid
        self.forks: Dict[int, Tuple[int, int, bool]] = {}  # child pid -> (parent pid, t of the fork, exact)
        self.inherited = 0                              # fork copies (handles on a parent's connection)
        # Issue 19: the server's Aborted_clients around the run, and drivers nobody probes.
        self.server_status: List[Tuple[int, dict]] = []  # (t, server_status event)
        self.unprobed: Dict[str, str] = {}              # module -> driver name (module.probed False)
