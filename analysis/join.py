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

``join`` is one pass in time order that hands each record to its kind's method of ``_Join``
(``_Join.ON``: one method per kind, or per pair of kinds read the same way); the evidence
classes are analysis/evidence.py's.
"""

from typing import Any, Dict, List, Optional, Tuple

from trace_quit.tracer import events as ev
from trace_quit.tracer.records import make, typed

from .aborted import pair_sockets
from .evidence import (  # noqa: F401 (re-exported: the join's evidence, as its readers import it)
    CLIENT_DETECTED, PEER_END_ERRNO, SEND_PEER_GONE, SERVER_GONE_CODES, SERVER_SENT, Collection, EngineLife, Joined,
    Life, server_gone_code,
)

#: The agent's kinds that name the thread they ran on.
_THREAD_KINDS = frozenset(k for k, (_, fields) in ev.KINDS.items() if any(f.name == "thread" for f in fields))

#: Pool events that end a connection in its pool's view ("detach" hands it over, ends nothing).
_POOL_ENDS = ("close", "close_detached", "invalidate", "soft_invalidate", "detach")


def _key_t(e) -> int:
    return e.t


def join(events: List[Any], header: Dict[str, Any]) -> Joined:
    """One pass over the time-sorted events of every source (typed records, tracer/records.py;
    a record still a dict, as the live views hold them, is typed here)."""
    default_pid = header.get("child_pid")
    return _Join(default_pid if default_pid is not None else 0).run(events)


class _Join:
    """The join's state while it reads: the current life of each key, open collections, brackets."""

    def __init__(self, default_pid: int):
        self.j = Joined()
        self.default_pid = default_pid
        self.lives_cur: Dict[Tuple[int, int], Life] = {}
        self.engines_cur: Dict[Tuple[int, int], EngineLife] = {}
        self.agent_gc: Dict[Tuple[int, int], Collection] = {}       # (pid, cid) -> collection
        self.agent_gc_open: Dict[Tuple[int, Any], Collection] = {}  # (pid, tid) -> running collection
        self.bpf_gc_open: Dict[Tuple[int, Any], Collection] = {}
        self.brackets: Dict[Tuple[int, Any], Life] = {}             # (pid, tid) -> life inside mysql_close
        self.forks = self.j.forks

    def run(self, events: List[Any]) -> Joined:
        usable = sorted(map(typed, events), key=_key_t)
        pair_sockets(usable)  # kernel records of sockets outside the client library get their conn
        j, on = self.j, self.ON
        sources, kinds = j.sources, j.kinds
        for e in usable:
            k = e.k
            t = e.t
            src = e.src
            if isinstance(src, str):
                sources[src] = sources.get(src, 0) + 1
            kinds[k] = kinds.get(k, 0) + 1
            if j.t_first is None:
                j.t_first = t
            j.t_last = t
            pid = e.pid  # absent on the capture-wide kinds (server_count, bpf_stats, ...)
            if pid is None:
                pid = self.default_pid
            tid = e.tid
            if src == ev.SRC_AGENT and tid is not None and k in _THREAD_KINDS and e.thread:
                j.thread_names[(pid, tid)] = e.thread
            handler = on.get(k)
            if handler is not None:
                handler(self, e, k, t, pid, tid)
        return j

    # --- lives ---------------------------------------------------------------------------
    def new_life(self, pid, conn, t_start, prev) -> Life:
        life = Life(pid, conn)
        life.t_start = t_start
        life.prev = prev
        self.j.lives.append(life)
        self.lives_cur[(pid, conn)] = life
        return life

    def life_for_open(self, pid, conn, layer_attr, t) -> Life:
        life = self.lives_cur.get((pid, conn))
        if life is None or life.ended or getattr(life, layer_attr) is not None:
            life = self.new_life(pid, conn, t, life)
        return life

    def open_at(self, pid, conn, t, exact, depth=0) -> Optional[Life]:
        """The life of ``conn`` open in ``pid`` at time ``t``, looking through forks; else None.

        ``exact``: ``t`` is the fork itself (the kernel's bpf_fork). The agent's agent_start in
        the child comes a little after the fork (1.3 ms in a real capture), and the parent may
        close the connection in between; but the child only reports connections it holds, so
        then the parent's latest life started before ``t`` is taken even if it closed since."""
        life = self.lives_cur.get((pid, conn))
        while life is not None and life.t_start is not None and life.t_start > t:
            life = life.prev
        if life is not None:
            t_closed = life.t_closed
            if life.failed or (exact and t_closed is not None and t_closed <= t):
                return None
            return life
        fork = self.forks.get(pid)
        if fork is None or fork[1] > t or depth > 64:
            return None
        return self.open_at(fork[0], conn, fork[1], fork[2], depth + 1)

    def inherit(self, pid, conn) -> Optional[Life]:
        """A forked child's first event about ``conn``: a copy of the parent's life open at the fork."""
        fork = self.forks.get(pid)
        if fork is None:
            return None
        parent = self.open_at(fork[0], conn, fork[1], fork[2])
        if parent is None:
            return None
        life = self.new_life(pid, conn, fork[1], None)
        life.inherited_from = parent
        life.root = parent.family
        life.t_open = life.root.t_open
        life.engine = parent.engine
        self.j.inherited += 1
        return life

    def life_for_close(self, pid, conn, layer_attr) -> Life:
        life = self.lives_cur.get((pid, conn))
        if life is None:
            life = self.inherit(pid, conn)
            if life is None:
                life = self.new_life(pid, conn, None, None)  # opened before the capture
        elif getattr(life, layer_attr) is not None:
            life = self.new_life(pid, conn, None, life)
        return life

    def engine_for(self, pid, engine) -> EngineLife:
        key = (pid, engine)
        el = self.engines_cur.get(key)
        if el is None:  # created before the capture, its engine_create was lost, or inherited
            parent = None
            fork = self.forks.get(pid)
            if fork is not None:
                parent = self.engines_cur.get((fork[0], engine))
            el = EngineLife.copy_for(pid, parent) if parent is not None else EngineLife(pid, engine, None, None)
            self.j.engines.append(el)
            self.engines_cur[key] = el
        return el

    def note_fork(self, child, parent, t, exact) -> None:
        if child is not None and parent is not None and child != parent and child not in self.forks:
            self.forks[child] = (parent, t, exact)

    def agent_collection(self, pid, tid, cid) -> Optional[Collection]:
        """The agent's collection by its id, else the one running on the thread."""
        c = self.agent_gc.get((pid, cid)) if cid is not None else None
        return c if c is not None else self.agent_gc_open.get((pid, tid))

    @staticmethod
    def _opened_at(life: Life, t: int) -> None:
        if life.t_open is None or t < life.t_open:
            life.t_open = t

    @staticmethod
    def _send_error(life: Life, err: int) -> None:
        if life.send_errors is None:
            life.send_errors = [err]
        elif err not in life.send_errors:
            life.send_errors.append(err)

    # --- connections: the agent's records --------------------------------------------------
    def on_conn_open(self, e, k, t, pid, tid):
        conn = e.conn
        cur = self.lives_cur.get((pid, conn))
        if k == ev.CONN_FAIL and cur is not None and not cur.ended and cur.agent_open is not None and not cur.failed:
            cur.failed = True  # conn_open then conn_fail for the same attempt
            return
        life = self.life_for_open(pid, conn, "agent_open", t)
        life.agent_open = e
        if k == ev.CONN_FAIL:
            life.failed = True
        self._opened_at(life, t)

    def on_conn_end(self, e, k, t, pid, tid):
        life = self.life_for_close(pid, e.conn, "agent_end")
        life.agent_end = e
        if k == ev.CONN_DESTROY and e.cause == ev.GC:
            life.agent_collection = self.agent_collection(pid, tid, e.cid)

    def on_pool(self, e, k, t, pid, tid):
        el = self.engine_for(pid, e.engine)
        conn = e.conn
        if conn is None:
            return
        life = self.lives_cur.get((pid, conn))
        if life is None and pid in self.forks:
            life = self.inherit(pid, conn)
        if life is None or life.ended:
            return
        if life.engine is None:
            life.engine = el
            el.connections += 1
        pev = e.ev
        if pev == "checkout":
            life.checkouts += 1
        elif pev in _POOL_ENDS:
            if pev != "detach":
                life.pool_end = pev
            if pev in ("invalidate", "soft_invalidate") and life.server_error is None:
                err = e.error
                code = server_gone_code(err)
                if code is not None:
                    life.server_error = err[:200]
                    life.server_code = code

    # --- connections: the kernel's records -------------------------------------------------
    def on_bpf_connect(self, e, k, t, pid, tid):
        life = self.life_for_open(pid, e.conn, "bpf_open", t)
        life.bpf_open = e
        if not e.ok:
            life.failed = True
        self._opened_at(life, t)

    def on_bpf_close(self, e, k, t, pid, tid):
        life = self.life_for_close(pid, e.conn, "bpf_end")
        life.bpf_end = e
        if e.eof:  # revision 2
            life.eof = True
        self.brackets[(pid, tid)] = life
        if e.cause == ev.GC:
            life.bpf_collection = self.bpf_gc_open.get((pid, tid))

    def on_bpf_close_ret(self, e, k, t, pid, tid):
        life = self.brackets.pop((pid, tid), None)
        if life is None:
            return
        life.bpf_ret = e
        err = e.send_err  # revision 2: errno, positive
        if err:
            self._send_error(life, -abs(err))

    def on_bpf_wire(self, e, k, t, pid, tid):
        life = self.brackets.get((pid, tid))
        if life is None:
            life = self.lives_cur.get((pid, e.conn))
        if life is None:
            return
        head = e.head  # lower-case hex (tracer/bpf/session.py)
        if life.wire is None:
            life.wire = [head]
        else:
            life.wire.append(head)
        ret = e.ret  # revision 2
        if ret is not None and ret < 0:
            self._send_error(life, ret)

    def on_bpf_peer_end(self, e, k, t, pid, tid):
        life = self.lives_cur.get((pid, e.conn))
        if life is not None and not life.ended and life.peer_end is None:
            life.peer_end = e
            life.eof = True

    def on_bpf_sock_connect(self, e, k, t, pid, tid):
        # A MySQL socket outside the probed library (PyMySQL, a static client): conn = its inode.
        if e.lib:
            return  # the library's own socket: bpf_connect already has it
        life = self.life_for_open(pid, e.conn, "bpf_open", t)
        life.bpf_open = e  # its connect succeeded: the kernel saw the server's greeting
        self._opened_at(life, t)

    def on_bpf_sock_close(self, e, k, t, pid, tid):
        if e.lib:
            return
        life = self.life_for_close(pid, e.conn, "bpf_end")
        life.bpf_end = e
        # The kernel's wire verdict for the socket as a whole (PyMySQL writes COM_QUIT only in close()).
        wire = e.wire
        if wire not in ev.WIRE_STATES:
            wire = ev.WIRE_CONFIRMED if e.quit_sent else ev.WIRE_NOT_SENT
        life.bpf_ret = make(ev.BPF_CLOSE_RET, wire=wire)
        if e.cause == ev.GC:
            life.bpf_collection = self.bpf_gc_open.get((pid, tid))

    # --- Engines ---------------------------------------------------------------------------
    def on_engine_create(self, e, k, t, pid, tid):
        engine = e.engine
        el = EngineLife(pid, engine, t, e)
        self.j.engines.append(el)
        self.engines_cur[(pid, engine)] = el

    def on_engine_dispose(self, e, k, t, pid, tid):
        el = self.engine_for(pid, e.engine)
        el.disposed += 1
        if el.t_dispose is None:
            el.t_dispose = t

    def on_engine_destroy(self, e, k, t, pid, tid):
        engine = e.engine
        el = self.engine_for(pid, engine)
        el.destroy = e
        el.t_end = t
        self.engines_cur.pop((pid, engine), None)
        if e.cause == ev.GC:
            c = self.agent_collection(pid, tid, e.cid)
            if c is not None:
                c.engines_destroyed += 1
                el.destroy_collection = c

    # --- collections -----------------------------------------------------------------------
    def on_gc_start(self, e, k, t, pid, tid):
        c = Collection(ev.SRC_AGENT, pid, tid, t, e)
        if c.thread and c.tid is not None:
            self.j.thread_names[(pid, c.tid)] = c.thread
        self.j.collections.append(c)
        self.j.gc_pids_agent.add(pid)
        if c.cid is not None:
            self.agent_gc[(pid, c.cid)] = c
        self.agent_gc_open[(pid, tid)] = c
        other = self.bpf_gc_open.get((pid, tid))
        if other is not None and other.twin is None:
            other.twin, c.twin = c, other

    def on_gc_stop(self, e, k, t, pid, tid):
        c = self.agent_collection(pid, tid, e.cid)
        if c is None:
            return
        c.t_stop = t
        c.collected = e.collected
        c.uncollectable = e.uncollectable
        if c.gen is None:
            c.gen = e.gen
        if self.agent_gc_open.get((pid, tid)) is c:
            del self.agent_gc_open[(pid, tid)]

    def on_bpf_gc_start(self, e, k, t, pid, tid):
        c = Collection(ev.SRC_BPF, pid, tid, t, e)
        self.j.collections.append(c)
        self.bpf_gc_open[(pid, tid)] = c
        other = self.agent_gc_open.get((pid, tid))
        if other is not None and other.twin is None:
            other.twin, c.twin = c, other

    def on_bpf_gc_done(self, e, k, t, pid, tid):
        c = self.bpf_gc_open.pop((pid, tid), None)
        if c is not None:
            c.t_stop = t
            collected = e.collected
            c.collected = collected if collected >= 0 else None  # -1: unknown

    def on_gc_counts(self, e, k, t, pid, tid):
        by_gen = e.by_gen
        if isinstance(by_gen, dict):
            self.j.gc_counts[pid] = {str(g): n for g, n in by_gen.items() if type(n) is int}
        if e.enabled is False:  # gc.disable() called after the agent started
            self.j.gc_disabled.add(pid)
        if e.final is True:
            self.j.agent_final.add(pid)

    # --- processes -------------------------------------------------------------------------
    def on_child_start(self, e, k, t, pid, tid):
        if self.j.t0 is None:
            self.j.t0 = t
            self.j.root_pid = e.pid or self.default_pid or None

    def on_child_exit(self, e, k, t, pid, tid):
        self.j.child_exit = (t, e.status)

    def on_bpf_exit(self, e, k, t, pid, tid):
        self.j.exits.setdefault(pid, t)

    def on_bpf_fork(self, e, k, t, pid, tid):
        self.note_fork(e.child, pid, t, True)

    def on_bpf_finalize(self, e, k, t, pid, tid):
        self.j.finalize.setdefault(pid, t)

    def on_agent_start(self, e, k, t, pid, tid):
        self.j.pids[pid] = e.python
        if e.gc_enabled is False:
            self.j.gc_disabled.add(pid)
        parent = e.forked_from
        if parent is not None:
            self.j.forked_from[pid] = parent
            self.note_fork(pid, parent, t, False)  # after the kernel's bpf_fork when both layers ran

    # --- the capture as a whole ------------------------------------------------------------
    def on_server_status(self, e, k, t, pid, tid):
        self.j.server_status.append((t, e))

    def on_server_count(self, e, k, t, pid, tid):
        self.j.server_counts.append((t, e.count))
        if e.own_user:
            self.j.server_own_user = e.own_user

    def on_bpf_probes(self, e, k, t, pid, tid):
        self.j.probes = e

    def on_module(self, e, k, t, pid, tid):
        name, version = e.name, e.version
        if name and version:
            self.j.modules.setdefault(name, version)
        if name and e.probed is False:
            self.j.unprobed.setdefault(name, e.driver or name)

    def on_agent_lost(self, e, k, t, pid, tid):
        self.j.agent_lost += e.n

    def on_bpf_stats(self, e, k, t, pid, tid):
        self.j.bpf_dropped = max(self.j.bpf_dropped, e.dropped)

    def on_note(self, e, k, t, pid, tid):
        if e.text:
            self.j.notes.append((t, e.level or "info", e.text))

    #: kind -> the method that reads it (kinds not listed add nothing but their counts).
    ON = {
        ev.CONN_OPEN: on_conn_open, ev.CONN_FAIL: on_conn_open,
        ev.CONN_CLOSE: on_conn_end, ev.CONN_DESTROY: on_conn_end, ev.POOL: on_pool,
        ev.BPF_CONNECT: on_bpf_connect, ev.BPF_CLOSE: on_bpf_close, ev.BPF_CLOSE_RET: on_bpf_close_ret,
        ev.BPF_WIRE: on_bpf_wire, ev.BPF_PEER_END: on_bpf_peer_end,
        ev.BPF_SOCK_CONNECT: on_bpf_sock_connect, ev.BPF_SOCK_CLOSE: on_bpf_sock_close,
        ev.ENGINE_CREATE: on_engine_create, ev.ENGINE_DISPOSE: on_engine_dispose,
        ev.ENGINE_DESTROY: on_engine_destroy,
        ev.GC_START: on_gc_start, ev.GC_STOP: on_gc_stop, ev.BPF_GC_START: on_bpf_gc_start,
        ev.BPF_GC_DONE: on_bpf_gc_done, ev.GC_COUNTS: on_gc_counts,
        ev.CHILD_START: on_child_start, ev.CHILD_EXIT: on_child_exit, ev.BPF_EXIT: on_bpf_exit,
        ev.BPF_FORK: on_bpf_fork, ev.BPF_FINALIZE: on_bpf_finalize, ev.AGENT_START: on_agent_start,
        ev.SERVER_STATUS: on_server_status, ev.SERVER_COUNT: on_server_count, ev.BPF_PROBES: on_bpf_probes,
        ev.MODULE: on_module, ev.AGENT_LOST: on_agent_lost, ev.BPF_STATS: on_bpf_stats,
        ev.TRACER_NOTE: on_note,
    }
