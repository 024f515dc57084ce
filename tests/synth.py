"""Synthetic captures: what the agent and the eBPF layer would record, written with CaptureWriter.

For unit tests and benchmarks that need captures with exactly known causes, without root,
a server or a traced program. Each method emits the events of every enabled layer in the
order and with the relative timing the real layers produce, with exactly the keys the real
tracer writes today (tracer/events.py ``KINDS``, revision ``VERSION``): every record goes
through ``events.check`` before it is written, so a synthetic capture cannot rely on a key
or a value the real layers never write (tests/unit/test_schema.py).

- a connection's open: ``bpf_connect`` at mysql_real_connect, then the agent's ``conn_open``;
- an explicit close: the agent's ``conn_close``, then ``bpf_close`` (+ the wire send) and
  ``bpf_close_ret``;
- a destruction: the agent's ``conn_destroy`` (its weakref callback runs before the object
  is freed), then the kernel's ``bpf_close`` from inside ``_dealloc``;
- collections: the agent writes every generation-1/2 collection but a generation-0 one only
  when it destroyed something, and counts all of them in ``gc_counts``; the kernel sees all;
- the tracer's ``bpf_probes`` event says which probes attached (the send tracepoints: wire).

``batch_agent=N`` holds the agent's events back and writes them N at a time, as the real
agent's channel does, so that readers see sources interleaved out of time order.
"""

import itertools
from typing import Dict, Iterable, List, Optional, Sequence

from trace_quit.tracer import events as ev
from trace_quit.tracer.capture import CaptureWriter

BASICSIZE = 16  # MYSQL* = id(connection) + the connection type's __basicsize__ (CPython 3.11)

T0 = 1_000_000_000_000  # an arbitrary CLOCK_MONOTONIC origin (ns)
US = 1_000

WIRE_HEADS = {
    ev.WIRE_CONFIRMED: ev.COM_QUIT_BYTES.hex(),
    ev.WIRE_ENCRYPTED: "1703030025",
}


class SynthCapture:
    """Builds one capture; times are seconds since the program started."""

    def __init__(self, path: str, layers: Sequence[str] = ("agent", "bpf"), wire: bool = True,
                 sampler: bool = False, pid: int = 4242, argv: Optional[List[str]] = None,
                 batch_agent: int = 0, cwd: str = "/srv/app", declare_layers: bool = True, max_bytes: int = 0):
        self.path = path
        self.agent = "agent" in layers
        self.bpf = "bpf" in layers
        self.wire = wire and self.bpf
        self.pid = pid
        self.cwd = cwd
        self.batch_agent = batch_agent
        self._held: List[dict] = []
        self._cid: Dict[int, itertools.count] = {}
        self.gc_counts: Dict[int, List[int]] = {}
        self._ids = itertools.count(0x7F0000001000, 0x1000)
        self._engines = itertools.count(0x7E0000000010, 0x10)
        self._fds = itertools.count(6)
        self.w = CaptureWriter(path, max_bytes=max_bytes)  # max_bytes: --max-capture's bound
        argv = argv or ["python", "app.py"]
        header = {"argv": argv, "tracer": {"version": "0.1.0", "pid": 1, "python": "3.11.2",
                                           "argv": ["trace-quit", "--"] + argv},
                  "child_pid": pid, "uid": 1000, "gid": 1000, "user": "app", "cwd": cwd}
        if declare_layers:
            header["layers"] = {"bpf": self.bpf, "agent": self.agent, "sampler": sampler}
        self.w.write_header(header)
        if self.bpf:
            probes = [{"role": "close", "symbol": "mysql_close", "how": "uprobe"},
                      {"role": "py_close", "symbol": "_mysql_ConnectionObject_close", "how": "uprobe"},
                      {"role": "py_dealloc", "symbol": "_mysql_ConnectionObject_dealloc", "how": "uprobe"}]
            if self.wire:
                probes += [{"role": "tracepoint", "symbol": "syscalls:sys_enter_%s" % name, "how": "tracepoint"}
                           for name in ("write", "sendto", "writev", "sendmsg")]
            self.emit({"k": ev.BPF_PROBES, "t": T0 - 1000 * US, "src": ev.SRC_TRACER, "probes": probes,
                       "missing": []})
        self.emit({"k": ev.CHILD_START, "t": T0, "src": ev.SRC_TRACER, "pid": pid, "attach_s": 0.05,
                   "startup_s": 0.01})
        if self.agent:
            self._agent(self._agent_start(T0 + 100 * US, pid, 0))

    # --- plumbing -----------------------------------------------------------------------
    @staticmethod
    def ns(t_s: float) -> int:
        """Seconds since start -> capture ns."""
        return T0 + int(round(t_s * 1e9))

    def _agent(self, e: dict) -> None:
        if not self.agent:
            return
        e["src"] = ev.SRC_AGENT
        ev.check(e)
        if self.batch_agent:
            self._held.append(e)
            if len(self._held) >= self.batch_agent:
                self._flush_agent()
        else:
            self.w.emit(e)

    def _flush_agent(self) -> None:
        for e in self._held:
            self.w.emit(e)
        self._held = []

    def _bpf(self, e: dict) -> None:
        if self.bpf:
            e["src"] = ev.SRC_BPF
            self.w.emit(ev.check(e))

    @staticmethod
    def _agent_start(t: int, pid: int, parent: int) -> dict:
        e = {"k": ev.AGENT_START, "t": t, "pid": pid, "tid": pid, "ppid": parent or 1, "python": "3.11.2",
             "executable": "/usr/bin/python3.11", "argv": ["app.py"], "basicsize": BASICSIZE,
             "gc_thresholds": [700, 10, 10], "gc_enabled": True, "implementation": "cpython", "gc_generations": 3}
        if parent:
            e["forked_from"] = parent
        return e
    def new_conn(self) -> int:
        """A fresh MYSQL* address."""
        return next(self._ids)

    # --- connections ----------------------------------------------------------------------
    def open(self, t_s: float, conn: Optional[int] = None, tid: Optional[int] = None,
             stack: Optional[List[str]] = None, engine: Optional[int] = None, fail: bool = False,
             pid: Optional[int] = None) -> int:
        """A connect (and its pool ``connect`` when ``engine`` is given); returns the MYSQL*."""
        conn = conn if conn is not None else self.new_conn()
        pid = pid or self.pid
        tid = tid or pid
        t = self.ns(t_s)
        self._bpf({"k": ev.BPF_CONNECT, "t": t, "pid": pid, "tid": tid, "conn": conn, "ok": not fail,
                   "t0": t - 2000 * US, "fd": None if fail else next(self._fds)})
        stack = stack or ["%s/app.py:40 in connect_db" % self.cwd, "%s/app.py:90 in main" % self.cwd]
        if fail:
            self._agent({"k": ev.CONN_FAIL, "t": t + 50 * US, "pid": pid, "tid": tid, "conn": conn,
                         "error": "OperationalError"})
            return conn
        self._agent({"k": ev.CONN_OPEN, "t": t + 50 * US, "pid": pid, "tid": tid, "conn": conn, "stack": stack,
                     "thread": "MainThread", "host": "127.0.0.1", "user": "app", "port": 3306, "db": "app"})
        if engine is not None:
            self._agent({"k": ev.POOL, "t": t + 60 * US, "pid": pid, "tid": tid, "engine": engine,
                         "ev": "connect", "conn": conn})
            self._agent({"k": ev.POOL, "t": t + 70 * US, "pid": pid, "tid": tid, "engine": engine,
                         "ev": "checkout", "conn": conn})
        return conn

    def close(self, t_s: float, conn: int, cause: str, gen: Optional[int] = None, cid: Optional[int] = None,
              tid: Optional[int] = None, wire: str = ev.WIRE_CONFIRMED, bpf_cause: Optional[str] = None,
              agent_cause: Optional[str] = None, bpf_gen: Optional[int] = None, thread: Optional[str] = None,
              stack: Optional[List[str]] = None, pid: Optional[int] = None, send: bool = True,
              send_ret: Optional[int] = None, eof: bool = False, sock: Optional[bool] = None,
              last_errno: Optional[int] = None, tcp_from: Optional[str] = None,
              fin_first: Optional[bool] = None) -> None:
        """End ``conn`` by ``cause`` as each layer would record it (override per layer to disagree).

        ``send=False``: mysql_close sent nothing; ``send_ret``: the COM_QUIT send's return value
        (-32 EPIPE, -104 ECONNRESET: then not confirmed, as the kernel decides); ``eof``: a peer
        end was seen before the close; ``sock``: whether the library still had its socket (False:
        dropped after ``last_errno``); ``tcp_from``: the TCP state the client's close() found
        (None: not TCP); ``fin_first``: the server's FIN had arrived before mysql_close began
        (None: not TCP). Every key the kernel layer writes is written, as it writes it."""
        pid = pid or self.pid
        tid = tid or pid
        t = self.ns(t_s)
        a_cause = agent_cause or cause
        if a_cause == ev.EXPLICIT_CLOSE:
            self._agent({"k": ev.CONN_CLOSE, "t": t, "pid": pid, "tid": tid, "conn": conn,
                         "stack": stack or ["%s/app.py:55 in close_db" % self.cwd], "thread": thread or "MainThread"})
        else:
            self._agent({"k": ev.CONN_DESTROY, "t": t, "pid": pid, "tid": tid, "conn": conn, "cause": a_cause,
                         "gen": gen if a_cause == ev.GC else None, "cid": cid if a_cause == ev.GC else None})
        b_cause = bpf_cause or cause
        # As tracer/bpf/session.py decodes it: gen only for gc; sock/last_errno read from the handle.
        self._bpf({"k": ev.BPF_CLOSE, "t": t + 10 * US, "pid": pid, "tid": tid, "conn": conn, "cause": b_cause,
                   "gen": (bpf_gen if bpf_gen is not None else gen) if b_cause == ev.GC else None,
                   "self": conn - BASICSIZE, "sock": True if sock is None else sock,
                   "last_errno": last_errno if last_errno is not None else 0, "eof": eof})
        sent = self.wire and send and wire in WIRE_HEADS
        if sent:
            head = WIRE_HEADS[wire]
            self._bpf({"k": ev.BPF_WIRE, "t": t + 20 * US, "pid": pid, "tid": tid, "conn": conn,
                       "len": len(head) // 2, "fd": 6, "head": head, "quit": wire == ev.WIRE_CONFIRMED,
                       "tls": wire == ev.WIRE_ENCRYPTED, "ret": send_ret if send_ret is not None else len(head) // 2})
        failed = sent and send_ret is not None and send_ret < 0
        self._bpf({"k": ev.BPF_CLOSE_RET, "t": t + 30 * US, "pid": pid, "tid": tid, "conn": conn,
                   "wire": wire if sent and not failed else ev.WIRE_NOT_SENT, "sends": 1 if sent else 0,
                   "t0": t + 10 * US, "send_err": -send_ret if failed else 0, "tcp_from": tcp_from,
                   "tcp_to": None if tcp_from is None else "last_ack" if tcp_from == "close_wait" else "fin_wait1",
                   "fin_first": fin_first})

    # --- processes ----------------------------------------------------------------------
    def fork(self, t_s: float, child: int, parent: Optional[int] = None) -> int:
        """``parent`` forks ``child``: the kernel's bpf_fork in the parent, then the child's agent_start."""
        parent = parent or self.pid
        t = self.ns(t_s)
        self._bpf({"k": ev.BPF_FORK, "t": t, "pid": parent, "tid": parent, "child": child})
        self._agent(self._agent_start(t + 300 * US, child, parent))
        return child

    def peer_end(self, t_s: float, conn: int, op: str = "read", ret: int = 0, pid: Optional[int] = None) -> None:
        """The kernel saw the server's EOF (read returned 0) or a reset on the connection's socket."""
        pid = pid or self.pid
        self._bpf({"k": ev.BPF_PEER_END, "t": self.ns(t_s), "pid": pid, "tid": pid, "conn": conn, "fd": 6,
                   "op": op, "ret": ret})

    def exit(self, t_s: float, pid: int) -> None:
        """A traced process (other than the root, which ``finish`` ends) exits."""
        self._bpf({"k": ev.BPF_EXIT, "t": self.ns(t_s), "pid": pid, "tid": pid})

    # --- garbage collections --------------------------------------------------------------
    def collection(self, t_s: float, gen: int, destroy: Iterable[int] = (), engines: Iterable[int] = (),
                   thread: str = "MainThread", tid: Optional[int] = None, collected: Optional[int] = None,
                   site: Optional[str] = None, pid: Optional[int] = None, step_us: int = 40) -> int:
        """A collection of ``gen`` that destroys ``destroy`` (and ``engines``); returns its cid."""
        pid = pid or self.pid
        tid = tid or pid
        cid = next(self._cid.setdefault(pid, itertools.count(1)))
        self.gc_counts.setdefault(pid, [0, 0, 0])[gen] += 1
        t = self.ns(t_s)
        destroy = list(destroy)
        engines = list(engines)
        written = gen > 0 or bool(destroy) or bool(engines)  # the agent skips quiet young collections
        start = {"k": ev.GC_START, "t": t, "pid": pid, "tid": tid, "gen": gen, "cid": cid, "thread": thread,
                 "site": site or "%s/app.py:77" % self.cwd}
        if written and gen > 0:
            self._agent(start)
        self._bpf({"k": ev.BPF_GC_START, "t": t + 5 * US, "pid": pid, "tid": tid, "gen": gen})
        tt = t_s + 10e-6
        for engine in engines:
            self._agent({"k": ev.ENGINE_DESTROY, "t": self.ns(tt), "pid": pid, "tid": tid, "engine": engine,
                         "cause": ev.GC, "gen": gen, "cid": cid})
        for conn in destroy:
            tt += step_us * 1e-6
            self.close(tt, conn, ev.GC, gen=gen, cid=cid, tid=tid, pid=pid)
        n = collected if collected is not None else 10 * len(destroy) + 7
        t_end = self.ns(tt + 20e-6)
        self._bpf({"k": ev.BPF_GC_DONE, "t": t_end, "pid": pid, "tid": tid, "collected": n, "gen": gen})
        if written and gen == 0:
            self._agent(start)  # written late, with its own start time (order by t, not position)
        if written:
            self._agent({"k": ev.GC_STOP, "t": t_end + 5 * US, "pid": pid, "tid": tid, "gen": gen, "cid": cid,
                         "collected": n, "uncollectable": 0})
        return cid

    # --- SQLAlchemy -----------------------------------------------------------------------
    def engine(self, t_s: float, site: Optional[str] = None, pool_class: str = "QueuePool", pool_size: int = 5,
               max_overflow: int = 10, pid: Optional[int] = None) -> int:
        """A create_engine() at ``site``; returns the engine id."""
        pid = pid or self.pid
        engine = next(self._engines)
        e = {"k": ev.ENGINE_CREATE, "t": self.ns(t_s), "pid": pid, "tid": pid, "engine": engine,
             "site": site or "%s/config/database.py:22 in get_db_session" % self.cwd, "pool_class": pool_class,
             "url": "mysql+mysqldb://app:***@127.0.0.1:3306/app"}
        if pool_size is not None:  # the agent leaves both out when the pool has no size() (NullPool)
            e.update(pool_size=pool_size, max_overflow=max_overflow)
        self._agent(e)
        return engine

    def pool(self, t_s: float, engine: int, what: str, conn: Optional[int] = None, pid: Optional[int] = None,
             **extra) -> None:
        """A pool event (checkout, checkin, close, invalidate …)."""
        pid = pid or self.pid
        e = {"k": ev.POOL, "t": self.ns(t_s), "pid": pid, "tid": pid, "engine": engine, "ev": what, "conn": conn}
        e.update(extra)
        self._agent(e)

    def dispose(self, t_s: float, engine: int) -> None:
        """engine.dispose()."""
        self._agent({"k": ev.ENGINE_DISPOSE, "t": self.ns(t_s), "pid": self.pid, "tid": self.pid, "engine": engine})

    # --- other sources --------------------------------------------------------------------
    def server_count(self, t_s: float, count: int) -> None:
        """One sampler reading of the server's PROCESSLIST count."""
        self.emit({"k": ev.SERVER_COUNT, "t": self.ns(t_s), "src": ev.SRC_SAMPLER, "count": count})

    def finalize(self, t_s: float) -> None:
        """Py_FinalizeEx entered."""
        self._bpf({"k": ev.BPF_FINALIZE, "t": self.ns(t_s), "pid": self.pid, "tid": self.pid})

    def note(self, t_s: float, text: str, level: str = "warning") -> None:
        """A tracer note."""
        self.emit({"k": ev.TRACER_NOTE, "t": self.ns(t_s), "src": ev.SRC_TRACER, "level": level, "text": text})

    def emit(self, event: dict) -> None:
        """Any event, checked against its kind's schema; ``emit_raw`` for deliberately bad ones."""
        self.w.emit(ev.check(event))

    def emit_raw(self, event: dict) -> None:
        """Any record as it is: for tests of what the reader does with a record the schema refuses."""
        self.w.emit(event)

    def finish(self, t_s: float, status: int = 0, trailer: bool = True, lost: Optional[dict] = None) -> str:
        """Child exit and trailer (or none: a truncated capture); returns the path."""
        for pid, counts in sorted(self.gc_counts.items()):
            self._agent({"k": ev.GC_COUNTS, "t": self.ns(t_s) - 1000 * US, "pid": pid, "tid": pid,
                         "by_gen": {"0": counts[0], "1": counts[1], "2": counts[2]}})
        self._flush_agent()
        if self.bpf:
            self._bpf({"k": ev.BPF_STATS, "t": self.ns(t_s), "emitted": 0, "dropped": (lost or {}).get("bpf", 0)})
            self._bpf({"k": ev.BPF_EXIT, "t": self.ns(t_s), "pid": self.pid, "tid": self.pid})
        self.emit({"k": ev.CHILD_EXIT, "t": self.ns(t_s) + 100 * US, "src": ev.SRC_TRACER, "pid": self.pid,
                   "status": status})
        self.w.close({"exit_status": status, "lost": lost or {}, "timings": {}})
        if not trailer:
            strip_trailer(self.path)
        return self.path


def strip_trailer(path: str) -> None:
    """Remove the last line (the trailer): what a tracer killed before finishing leaves."""
    with open(path, "rb") as f:
        data = f.read()
    cut = data.rstrip(b"\n").rfind(b"\n")
    with open(path, "wb") as f:
        f.write(data[:cut + 1])


def known_causes(path: str, layers: Sequence[str] = ("agent", "bpf"), **kwargs) -> str:
    """The known-causes workload's capture: 7 explicit_close, 11 refcount, 5 gc gen 0,
    13 gc gen 2, 3 shutdown (workloads/known_causes.py, in its order)."""
    s = SynthCapture(path, layers=layers, argv=["python", "-m", "trace_quit.workloads", "known-causes"], **kwargs)
    t = 0.1
    s.collection(t, 2, collected=0)  # gc.collect() at start
    t += 0.01
    to_close = [s.open(t + i * 0.003) for i in range(7)]
    t += 0.05
    for i, c in enumerate(to_close):
        s.close(t + i * 0.0005, c, ev.EXPLICIT_CLOSE, tid=5001, thread="closer",
                stack=["/srv/app/known_causes.py:66 in closer", "/usr/lib/python3.11/threading.py:975 in run"])
    t += 0.05
    for i in range(11):
        c = s.open(t)
        s.close(t + 0.002, c, ev.REFCOUNT)
        t += 0.004
    old = [s.open(t + i * 0.003) for i in range(13)]
    t += 0.05
    s.collection(t, 1, collected=40)
    s.collection(t + 0.001, 0, collected=0)
    s.collection(t + 0.002, 1, collected=0)
    t += 0.01
    young = [s.open(t + i * 0.003) for i in range(5)]
    t += 0.05
    s.collection(t, 0, destroy=young, collected=15)
    t += 0.01
    s.collection(t, 2, destroy=old, collected=39)
    t += 0.01
    left = [s.open(t + i * 0.003) for i in range(3)]
    t += 0.05
    s.finalize(t)
    for i, c in enumerate(left):
        s.close(t + 0.001 + i * 0.0002, c, ev.SHUTDOWN)
    return s.finish(t + 0.01)


ENGINE_SITE = "/srv/app/config/database.py:22 in get_db_session"


def engine_per_call(path: str, n: int = 500, layers: Sequence[str] = ("agent", "bpf"), spacing_s: float = 0.12,
                    gen1_every_s: float = 6.5, gen1_size: int = 33, gen0_every_s: float = 15.0, gen0_size: int = 2,
                    gen2_every: int = 6, workers: int = 20, sampler: bool = True, **kwargs) -> Dict[str, object]:
    """Experiment 1 of the study behind trace-quit as a capture (docs/causes.md): one Engine per
    call at ``ENGINE_SITE``, never closed.

    Connection i opens at 0.5 + i × ``spacing_s`` with its own Engine (QueuePool 5+10). Every
    ``gen1_every_s`` a generation-1 collection destroys the ``gen1_size`` oldest open ones; every
    ``gen0_every_s`` (from 15.05 s) a generation-0 collection destroys ``gen0_size``; the
    connections i > 0 with i % ``gen2_every`` == 0 reach generation 2 and die together in one
    generation-2 collection (10,575 objects, on ThreadPoolExecutor-0_3) 5.92 s after the last
    open; the rest die at interpreter shutdown 14.7 s later. Returns the plan's numbers.
    """
    s = SynthCapture(path, layers=layers, sampler=sampler, argv=["python", "main.py", "--experiment", "1"],
                     **kwargs)
    opens = [0.5 + i * spacing_s for i in range(n)]
    gen2_at = round(opens[-1] + 5.92, 6)
    shutdown_at = round(gen2_at + 14.7, 6)
    reserved = {i for i in range(1, n) if i % gen2_every == 0}
    actions = [(t, 0, "open", i) for i, t in enumerate(opens)]
    actions += [(t + 1.0, 1, "checkin", i) for i, t in enumerate(opens)]
    k = 1
    while gen1_every_s * k < gen2_at:
        actions.append((round(gen1_every_s * k, 6), 2, "gen1", k))
        k += 1
    m = 0
    while 15.05 + gen0_every_s * m < gen2_at:
        actions.append((round(15.05 + gen0_every_s * m, 6), 2, "gen0", m))
        m += 1
    actions.append((gen2_at, 2, "gen2", 0))
    if sampler:
        t = 0.25
        while t < shutdown_at:
            actions.append((round(t, 6), 3, "sample", 0))
            t += 0.5
    actions.sort()

    conns: Dict[int, int] = {}
    engines: Dict[int, int] = {}
    live: List[int] = []          # open, not reserved, oldest first
    live_reserved: List[int] = []
    dead = set()
    plan = {"gen1": [], "gen0": [], "gen2": 0, "shutdown": 0, "opened": n, "gen2_at": gen2_at,
            "shutdown_at": shutdown_at}
    tids = [5000 + w for w in range(workers)]
    names = ["ThreadPoolExecutor-0_%d" % w for w in range(workers)]
    for t, _, what, i in actions:
        if what == "open":
            w = i % workers
            engine = s.engine(t - 0.001, site=ENGINE_SITE)
            engines[i] = engine
            conns[i] = s.open(t, tid=tids[w], engine=engine,
                              stack=["/srv/app/.venv/lib/python3.11/site-packages/sqlalchemy/pool/base.py:30 in "
                                     "__connect", "/srv/app/main.py:31 in on_done"])
            (live_reserved if i in reserved else live).append(i)
        elif what == "checkin":
            if i not in dead:
                s.pool(t, engines[i], "checkin", conns[i])
        elif what == "sample":
            s.server_count(t, len(live) + len(live_reserved))
        else:
            if what == "gen1":
                victims, live[:] = live[:gen1_size], live[gen1_size:]
                gen, thread, collected = 1, names[i % workers], 900 + 10 * len(victims)
                plan["gen1"].append(len(victims))
            elif what == "gen0":
                victims, live[:] = live[:gen0_size], live[gen0_size:]
                gen, thread, collected = 0, names[(i + 7) % workers], 50
                plan["gen0"].append(len(victims))
            else:
                victims, live_reserved[:] = live_reserved[:], []
                gen, thread, collected = 2, names[3], 10575
                plan["gen2"] = len(victims)
            dead.update(victims)
            tid = tids[names.index(thread)]
            s.collection(t, gen, destroy=[conns[v] for v in victims], engines=[engines[v] for v in victims],
                         thread=thread, tid=tid, collected=collected, site="/srv/app/main.py:33")
    s.finalize(shutdown_at)
    rest = live + live_reserved
    for j, v in enumerate(rest):
        tt = shutdown_at + 0.001 + j * 0.0001
        s.close(tt, conns[v], ev.SHUTDOWN)
        s._agent({"k": ev.ENGINE_DESTROY, "t": s.ns(tt) + 5 * US, "pid": s.pid, "tid": s.pid,
                  "engine": engines[v], "cause": ev.SHUTDOWN, "gen": None, "cid": None})
    plan["shutdown"] = len(rest)
    s.finish(shutdown_at + 0.2)
    return plan
