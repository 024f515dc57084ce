"""Join the sources' events into connection lives, engine lives and garbage collections.

Every source stamps CLOCK_MONOTONIC ns, so one stable sort by ``t`` interleaves them (file
order breaks ties: the agent's batches arrive late, but their stamps are taken at the hook).

The join key of a connection is ``(pid, MYSQL*)``. Addresses are reused as soon as a
connection object is freed, so a key's events are cut into *lives*: an open starts a new
life when the current one already ended (or was already opened by the same layer); a close
starts one when the current life was already closed by the same layer (its open was not
seen: opened before the capture, or inherited through fork). Each life keeps the raw
evidence of each layer; ``attribute.py`` decides the cause from it.

A forked child inherits its parent's open connections (same ``MYSQL*``, same socket): the
first event of a child about an address it never opened looks up, through the fork (the
kernel's ``bpf_fork`` in the parent, else the agent's ``agent_start.forked_from`` in the
child), the parent's life that was open at the fork, and starts a *copy* of it whose
``root`` is the life that opened the connection. ``attribute.count_families`` then counts
one end per server connection (the first).

Records arrive checked against their kind's schema (analysis/capture.py through
tracer/events.py): every field read here has its declared type, so nothing is coerced; a
field a revision-1 capture lacks is absent (``.get``), never guessed.

Engines are keyed by ``(pid, id(engine))`` with the same rule (ids are reused too, and a
child's copy of an Engine keeps the parent's call site); pool events tie a connection to
the Engine whose pool opened it. Collections are keyed by the
agent's per-process collection id, and by (pid, tid) for the kernel's gc probes; a kernel
collection running inside an agent collection on the same thread is the same collection.
"""

import re
from typing import Any, Dict, List, Optional, Tuple

from trace_quit.tracer import events as ev

from .aborted import pair_sockets

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
        # decided by attribute.py:
        "cause", "generation", "collection", "reason", "wire_state", "t_end", "end_tid", "server_evidence",
        "copy_of",
    )

    def __init__(self, pid: int, conn: int):
        self.pid = pid
        self.conn = conn
        self.t_open: Optional[int] = None
        self.agent_open: Optional[dict] = None   # conn_open / conn_fail event
        self.bpf_open: Optional[dict] = None     # bpf_connect event
        self.failed = False                      # the connect failed: its mysql_close sends nothing
        self.engine: Optional["EngineLife"] = None
        self.checkouts = 0
        self.t_start: Optional[int] = None       # first known moment (open, fork); None: before the capture
        self.pool_end: Optional[str] = None      # last pool event that ends a connection (close, ...)
        self.server_error: Optional[str] = None  # a server-gone error seen before the client's close
        self.server_code: Optional[int] = None   # its error code (SERVER_GONE_CODES)
        self.agent_end: Optional[dict] = None    # conn_close / conn_destroy event
        self.bpf_end: Optional[dict] = None      # bpf_close event
        self.bpf_ret: Optional[dict] = None      # bpf_close_ret event (carries the kernel's wire verdict)
        self.wire: Optional[List[str]] = None    # heads of sends seen inside mysql_close
        self.send_errors: Optional[List[int]] = None  # failed sends' return values (-errno), when recorded
        self.eof = False                         # the kernel saw the peer's EOF/reset before the close
        self.peer_end: Optional[dict] = None     # that bpf_peer_end event, when recorded
        self.agent_collection: Optional["Collection"] = None
        self.bpf_collection: Optional["Collection"] = None
        self.prev: Optional["Life"] = None       # the previous life at the same (pid, MYSQL*)
        self.inherited_from: Optional["Life"] = None  # the parent's life this fork copy was taken from
        self.root: Optional["Life"] = None       # a fork copy's family root: the life that opened it
        self.cause: Optional[str] = None
        self.generation: Optional[int] = None
        self.collection: Optional["Collection"] = None
        self.reason: Optional[str] = None
        self.wire_state: Optional[str] = None
        self.t_end: Optional[int] = None
        self.end_tid: Optional[int] = None
        self.server_evidence: Optional[List[str]] = None  # evidence types of a ``server`` cause
        self.copy_of: Optional["Life"] = None    # set when another copy's end is the one counted

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
        ts = [e["t"] for e in (self.agent_end, self.bpf_end) if e is not None]
        return min(ts) if ts else None

    @property
    def family(self) -> "Life":
        """The life that opened the server connection this one is a handle on (itself unless a fork copy)."""
        return self.root if self.root is not None else self

    @property
    def driver(self) -> str:
        """The client library: the agent's ``driver``, "socket" for a kernel-only non-libmysqlclient socket."""
        for e in (self.agent_open, self.agent_end):
            if e is not None:
                d = e.get("driver")
                if isinstance(d, str) and d in ev.DRIVERS:
                    return d
        for e in (self.bpf_open, self.bpf_end):
            if e is not None and e.get("k") in (ev.BPF_SOCK_CONNECT, ev.BPF_SOCK_CLOSE):
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

    def __init__(self, pid: int, engine: int, t: Optional[int], e: Optional[dict]):
        e = e or {}
        self.pid = pid
        self.engine = engine
        self.t_create = t
        self.site: Optional[str] = e.get("site")
        self.chain: List[str] = [f for f in e.get("chain") or () if isinstance(f, str)]  # innermost first
        self.pool_class: Optional[str] = e.get("pool_class")
        self.pool_size: Optional[int] = e.get("pool_size")
        self.max_overflow: Optional[int] = e.get("max_overflow")
        self.url: Optional[str] = e.get("url")
        self.disposed = 0
        self.t_dispose: Optional[int] = None
        self.destroy: Optional[dict] = None
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
                 "collected", "uncollectable", "twin", "lives", "engines_destroyed")

    def __init__(self, src: str, pid: int, tid: Optional[int], t: int, e: dict):
        self.src = src
        self.pid = pid
        self.tid = tid
        self.cid: Optional[int] = e.get("cid")      # the agent's collection id (bpf: None)
        self.gen: Optional[int] = e.get("gen")
        self.t_start = t
        self.t_stop: Optional[int] = None
        self.thread: Optional[str] = e.get("thread")
        # The program's own frame when the agent found one above a library frame (gc_start.app_site).
        self.site: Optional[str] = e.get("app_site") or e.get("site")
        self.collected: Optional[int] = None
        self.uncollectable: Optional[int] = None
        self.twin: Optional["Collection"] = None  # the same collection seen by the other layer
        self.lives: List[Life] = []               # connections it destroyed (filled by attribution)
        self.engines_destroyed = 0


class Joined:
    """Everything the join found, in time order, plus the capture-wide facts."""

    def __init__(self):
        self.lives: List[Life] = []
        self.engines: List[EngineLife] = []
        self.collections: List[Collection] = []        # agent and kernel, start order
        self.server_counts: List[Tuple[int, int]] = []
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
        self.probes: Optional[dict] = None              # the bpf_probes event: attached and missing probes
        self.forked_from: Dict[int, int] = {}           # child pid -> parent pid
        self.forks: Dict[int, Tuple[int, int, bool]] = {}  # child pid -> (parent pid, t of the fork, exact)
        self.inherited = 0                              # fork copies (handles on a parent's connection)
        # Issue 19: the server's Aborted_clients around the run, and drivers nobody probes.
        self.server_status: List[Tuple[int, dict]] = []  # (t, server_status event)
        self.unprobed: Dict[str, str] = {}              # module -> driver name (module.probed False)


def _key_t(e: dict) -> int:
    return e["t"]


def join(events: List[dict], header: Dict[str, Any]) -> Joined:
    """One pass over the time-sorted events of every source."""
    j = Joined()
    default_pid = header.get("child_pid")
    if default_pid is None:
        default_pid = 0
    usable = sorted(events, key=_key_t)
    pair_sockets(usable)  # kernel records of sockets outside the client library get their conn

    lives_cur: Dict[Tuple[int, int], Life] = {}
    engines_cur: Dict[Tuple[int, int], EngineLife] = {}
    agent_gc: Dict[Tuple[int, int], Collection] = {}       # (pid, cid) -> collection
    agent_gc_open: Dict[Tuple[int, Any], Collection] = {}  # (pid, tid) -> running collection
    bpf_gc_open: Dict[Tuple[int, Any], Collection] = {}
    brackets: Dict[Tuple[int, Any], Life] = {}             # (pid, tid) -> life inside mysql_close
    lives = j.lives
    sources = j.sources
    kinds = j.kinds

    forks = j.forks

    def new_life(pid, conn, t_start, prev):
        life = Life(pid, conn)
        life.t_start = t_start
        life.prev = prev
        lives.append(life)
        lives_cur[(pid, conn)] = life
        return life

    def life_for_open(pid, conn, layer_attr, t):
        key = (pid, conn)
        life = lives_cur.get(key)
        if life is None or life.ended or getattr(life, layer_attr) is not None:
            life = new_life(pid, conn, t, life)
        return life

    def open_at(pid, conn, t, exact, depth=0):
        """The life of ``conn`` open in ``pid`` at time ``t``, looking through forks; else None.

        ``exact``: ``t`` is the fork itself (the kernel's bpf_fork). The agent's agent_start in
        the child comes a little after the fork (1.3 ms in a real capture), and the parent may
        close the connection in between; but the child only reports connections it holds, so
        then the parent's latest life started before ``t`` is taken even if it closed since."""
        life = lives_cur.get((pid, conn))
        while life is not None and life.t_start is not None and life.t_start > t:
            life = life.prev
        if life is not None:
            t_closed = life.t_closed
            if life.failed or (exact and t_closed is not None and t_closed <= t):
                return None
            return life
        fork = forks.get(pid)
        if fork is None or fork[1] > t or depth > 64:
            return None
        return open_at(fork[0], conn, fork[1], fork[2], depth + 1)

    def inherit(pid, conn):
        """A forked child's first event about ``conn``: a copy of the parent's life open at the fork."""
        fork = forks.get(pid)
        if fork is None:
            return None
        parent = open_at(fork[0], conn, fork[1], fork[2])
        if parent is None:
            return None
        life = new_life(pid, conn, fork[1], None)
        life.inherited_from = parent
        life.root = parent.family
        life.t_open = life.root.t_open
        life.engine = parent.engine
        j.inherited += 1
        return life

    def life_for_close(pid, conn, layer_attr):
        key = (pid, conn)
        life = lives_cur.get(key)
        if life is None:
            life = inherit(pid, conn)
            if life is None:
                life = new_life(pid, conn, None, None)  # opened before the capture
        elif getattr(life, layer_attr) is not None:
            life = new_life(pid, conn, None, life)
        return life

    def engine_for(pid, engine, t):
        key = (pid, engine)
        el = engines_cur.get(key)
        if el is None:  # created before the capture, its engine_create was lost, or inherited
            parent = None
            fork = forks.get(pid)
            if fork is not None:
                parent = engines_cur.get((fork[0], engine))
            if parent is not None:
                el = EngineLife.copy_for(pid, parent)
            else:
                el = EngineLife(pid, engine, None, None)
            j.engines.append(el)
            engines_cur[key] = el
        return el

    def note_fork(child, parent, t, exact):
        if child is not None and parent is not None and child != parent and child not in forks:
            forks[child] = (parent, t, exact)

    for e in usable:
        k = e["k"]
        t = e["t"]
        src = e.get("src")
        if isinstance(src, str):
            sources[src] = sources.get(src, 0) + 1
        kinds[k] = kinds.get(k, 0) + 1
        if j.t_first is None:
            j.t_first = t
        j.t_last = t
        pid = e.get("pid")  # absent on the capture-wide kinds (server_count, bpf_stats, ...)
        if pid is None:
            pid = default_pid
        tid = e.get("tid")
        if src == ev.SRC_AGENT and tid is not None and e.get("thread"):
            j.thread_names[(pid, tid)] = e["thread"]

        if k == ev.CONN_OPEN or k == ev.CONN_FAIL:
            conn = e["conn"]
            key = (pid, conn)
            cur = lives_cur.get(key)
            if (k == ev.CONN_FAIL and cur is not None and not cur.ended and cur.agent_open is not None
                    and not cur.failed):
                cur.failed = True  # conn_open then conn_fail for the same attempt
                continue
            life = life_for_open(pid, conn, "agent_open", t)
            life.agent_open = e
            if k == ev.CONN_FAIL:
                life.failed = True
            if life.t_open is None or t < life.t_open:
                life.t_open = t
        elif k == ev.BPF_CONNECT:
            life = life_for_open(pid, e["conn"], "bpf_open", t)
            life.bpf_open = e
            if not e["ok"]:
                life.failed = True
            if life.t_open is None or t < life.t_open:
                life.t_open = t
        elif k == ev.CONN_CLOSE or k == ev.CONN_DESTROY:
            life = life_for_close(pid, e["conn"], "agent_end")
            life.agent_end = e
            if k == ev.CONN_DESTROY and e["cause"] == ev.GC:
                c = None
                cid = e["cid"]
                if cid is not None:
                    c = agent_gc.get((pid, cid))
                if c is None:
                    c = agent_gc_open.get((pid, tid))
                life.agent_collection = c
        elif k == ev.BPF_CLOSE:
            life = life_for_close(pid, e["conn"], "bpf_end")
            life.bpf_end = e
            if e.get("eof"):  # revision 2
                life.eof = True
            brackets[(pid, tid)] = life
            if e["cause"] == ev.GC:
                life.bpf_collection = bpf_gc_open.get((pid, tid))
        elif k == ev.BPF_CLOSE_RET:
            life = brackets.pop((pid, tid), None)
            if life is not None:
                life.bpf_ret = e
                err = e.get("send_err")  # revision 2: errno, positive
                if err:
                    err = -abs(err)
                    if life.send_errors is None:
                        life.send_errors = [err]
                    elif err not in life.send_errors:
                        life.send_errors.append(err)
        elif k == ev.BPF_WIRE:
            life = brackets.get((pid, tid))
            if life is None:
                life = lives_cur.get((pid, e["conn"]))
            if life is not None:
                head = e["head"]  # lower-case hex (tracer/bpf/session.py)
                if life.wire is None:
                    life.wire = [head]
                else:
                    life.wire.append(head)
                ret = e.get("ret")  # revision 2
                if ret is not None and ret < 0:
                    if life.send_errors is None:
                        life.send_errors = [ret]
                    elif ret not in life.send_errors:
                        life.send_errors.append(ret)
        elif k == ev.BPF_PEER_END:
            life = lives_cur.get((pid, e["conn"]))
            if life is not None and not life.ended and life.peer_end is None:
                life.peer_end = e
                life.eof = True
        elif k == ev.POOL:
            el = engine_for(pid, e["engine"], t)
            conn = e["conn"]
            if conn is None:
                continue
            life = lives_cur.get((pid, conn))
            if life is None and pid in forks:
                life = inherit(pid, conn)
            if life is None or life.ended:
                continue
            if life.engine is None:
                life.engine = el
                el.connections += 1
            pev = e["ev"]
            if pev == "checkout":
                life.checkouts += 1
            elif pev in ("close", "close_detached", "invalidate", "soft_invalidate", "detach"):
                if pev != "detach":
                    life.pool_end = pev
                if pev in ("invalidate", "soft_invalidate") and life.server_error is None:
                    err = e.get("error")
                    code = server_gone_code(err)
                    if code is not None:
                        life.server_error = err[:200]
                        life.server_code = code
        elif k == ev.ENGINE_CREATE:
            engine = e["engine"]
            el = EngineLife(pid, engine, t, e)
            j.engines.append(el)
            engines_cur[(pid, engine)] = el
        elif k == ev.ENGINE_DISPOSE:
            el = engine_for(pid, e["engine"], t)
            el.disposed += 1
            if el.t_dispose is None:
                el.t_dispose = t
        elif k == ev.ENGINE_DESTROY:
            engine = e["engine"]
            el = engine_for(pid, engine, t)
            el.destroy = e
            el.t_end = t
            engines_cur.pop((pid, engine), None)
            if e["cause"] == ev.GC:
                cid = e["cid"]
                c = agent_gc.get((pid, cid)) if cid is not None else None
                if c is None:
                    c = agent_gc_open.get((pid, tid))
                if c is not None:
                    c.engines_destroyed += 1
                    el.destroy_collection = c
        elif k == ev.GC_START:
            c = Collection(ev.SRC_AGENT, pid, tid, t, e)
            if c.thread and c.tid is not None:
                j.thread_names[(pid, c.tid)] = c.thread
            j.collections.append(c)
            j.gc_pids_agent.add(pid)
            if c.cid is not None:
                agent_gc[(pid, c.cid)] = c
            agent_gc_open[(pid, tid)] = c
            other = bpf_gc_open.get((pid, tid))
            if other is not None and other.twin is None:
                other.twin, c.twin = c, other
        elif k == ev.GC_STOP:
            c = agent_gc.get((pid, e["cid"]))
            if c is None:
                c = agent_gc_open.get((pid, tid))
            if c is not None:
                c.t_stop = t
                c.collected = e["collected"]
                c.uncollectable = e["uncollectable"]
                if c.gen is None:
                    c.gen = e["gen"]
                if agent_gc_open.get((pid, tid)) is c:
                    del agent_gc_open[(pid, tid)]
        elif k == ev.BPF_GC_START:
            c = Collection(ev.SRC_BPF, pid, tid, t, e)
            j.collections.append(c)
            bpf_gc_open[(pid, tid)] = c
            other = agent_gc_open.get((pid, tid))
            if other is not None and other.twin is None:
                other.twin, c.twin = c, other
        elif k == ev.BPF_GC_DONE:
            c = bpf_gc_open.pop((pid, tid), None)
            if c is not None:
                c.t_stop = t
                collected = e["collected"]
                c.collected = collected if collected >= 0 else None  # -1: unknown
        elif k == ev.BPF_SOCK_CONNECT:
            # A MySQL socket outside the probed library (PyMySQL, a static client): conn = its inode.
            conn = e["conn"]
            if e.get("lib"):
                continue  # the library's own socket: bpf_connect already has it
            life = life_for_open(pid, conn, "bpf_open", t)
            life.bpf_open = dict(e, ok=True)
            if life.t_open is None or t < life.t_open:
                life.t_open = t
        elif k == ev.BPF_SOCK_CLOSE:
            conn = e["conn"]
            if e.get("lib"):
                continue
            life = life_for_close(pid, conn, "bpf_end")
            life.bpf_end = e
            # The kernel's wire verdict for the socket as a whole (PyMySQL writes COM_QUIT only in close()).
            wire = e.get("wire")
            if wire not in ev.WIRE_STATES:
                wire = ev.WIRE_CONFIRMED if e.get("quit_sent") else ev.WIRE_NOT_SENT
            life.bpf_ret = {"k": ev.BPF_SOCK_CLOSE, "wire": wire}
            if e.get("cause") == ev.GC:
                life.bpf_collection = bpf_gc_open.get((pid, tid))
        elif k == ev.SERVER_STATUS:
            j.server_status.append((t, e))
        elif k == ev.SERVER_COUNT:
            j.server_counts.append((t, e["count"]))
        elif k == ev.CHILD_START:
            if j.t0 is None:
                j.t0 = t
                j.root_pid = e["pid"] or default_pid or None
        elif k == ev.CHILD_EXIT:
            j.child_exit = (t, e["status"])
        elif k == ev.BPF_EXIT:
            j.exits.setdefault(pid, t)
        elif k == ev.BPF_FORK:
            note_fork(e["child"], pid, t, True)
        elif k == ev.BPF_FINALIZE:
            j.finalize.setdefault(pid, t)
        elif k == ev.AGENT_START:
            j.pids[pid] = e["python"]
            if e["gc_enabled"] is False:
                j.gc_disabled.add(pid)
            parent = e.get("forked_from")
            if parent is not None:
                j.forked_from[pid] = parent
                note_fork(pid, parent, t, False)  # after the kernel's bpf_fork when both layers ran
        elif k == ev.GC_COUNTS:
            by_gen = e.get("by_gen")
            if isinstance(by_gen, dict):
                j.gc_counts[pid] = {str(g): n for g, n in by_gen.items() if type(n) is int}
            if e.get("enabled") is False:  # gc.disable() called after the agent started
                j.gc_disabled.add(pid)
            if e.get("final") is True:
                j.agent_final.add(pid)
        elif k == ev.BPF_PROBES:
            j.probes = e
        elif k == ev.MODULE:
            name, version = e["name"], e["version"]
            if name and version:
                j.modules.setdefault(name, version)
            if name and e.get("probed") is False:
                j.unprobed.setdefault(name, e.get("driver") or name)
        elif k == ev.AGENT_LOST:
            j.agent_lost += e["n"]
        elif k == ev.BPF_STATS:
            j.bpf_dropped = max(j.bpf_dropped, e["dropped"])
        elif k == ev.TRACER_NOTE:
            if e["text"]:
                j.notes.append((t, e["level"] or "info", e["text"]))
    return j
