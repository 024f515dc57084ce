"""The agent's runtime inside the traced program: GC, mysqlclient and SQLAlchemy hooks.

Rules it lives by (it runs inside someone else's program):

* stdlib only, Python 3.8+; never prints; never raises into user code (every hook is
  wrapped, and a failing hook only goes quiet);
* GC callbacks do constant, cheap work: a dict store and a deque append, no I/O, no locks
  (a lock taken by the flusher could be wanted again by a collection on the same thread);
* events leave through a non-blocking FIFO in writes of at most PIPE_BUF bytes, so the
  lines of forked processes sharing it never interleave; when it is full, events are
  counted as lost, never waited for;
* after start-up the hot paths reach nothing through module globals, only through the
  ``Agent`` instance: during interpreter finalisation module dicts are cleared, and the
  destructions that happen then are exactly the ``shutdown`` cause we must still record.
  The agent stays reachable from ``gc.callbacks`` (cleared last, in ``_PyGC_Fini``), which
  keeps its registry of weak references — and so their callbacks — alive to the end.
"""

import atexit
import collections
import gc
import json
import os
import sys
import threading
import time
import weakref

from _trace_quit_agent import ENV_CHANNEL, EVENTS_PY

PIPE_BUF = 4096
FLUSH_INTERVAL_S = 0.05
MAX_QUEUED = 200000          # events; beyond this they are counted as lost
STACK_DEPTH = 8              # frames kept for open/close stacks (a line stays < PIPE_BUF)
CONNECTION_MODULE = "MySQLdb.connections"
SQLALCHEMY_MODULE = "sqlalchemy"
POOL_EVENTS = ("connect", "checkout", "checkin", "close", "detach", "close_detached",
               "invalidate", "soft_invalidate")


def _load_events():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_trace_quit_events", EVENTS_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["_trace_quit_events"] = module
    return module


class Agent:
    """One per process: the channel, the GC bookkeeping and the registries of live objects."""

    def __init__(self, channel_path, ev):
        self.ev = ev
        self.channel_path = channel_path
        # Hold a read end too (never read): if the tracer is killed, the FIFO keeps a reader,
        # so writes fill it and count as lost instead of raising SIGPIPE in a program that
        # restored SIGPIPE's default action.
        self.keepalive_fd = os.open(channel_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.fd = os.open(channel_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.pid = os.getpid()
        self.queue = collections.deque()
        self.lost = 0
        self.lost_reported = 0
        self.finalizing = False
        # Per-thread running collection: thread ident -> [cid, generation, t_start, frame, written]
        self.collecting = {}
        self.cid = 0
        self.gc_counts = [0, 0, 0]
        self.gc_counts_reported = None
        self.connections = {}    # MYSQL* -> weakref of a connection believed open
        self.engines = {}        # engine id -> weakref
        # Bound once, so the hot paths and finalisation never look up module globals.
        self.now = time.monotonic_ns
        self.native_tid = threading.get_native_id
        self.ident = threading.get_ident
        self.current_thread = threading.current_thread
        self.write = os.write
        self.dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode
        self.is_finalizing = sys.is_finalizing
        self.getframe = sys._getframe
        self.weakref = weakref.ref
        self.conn_offset = object.__basicsize__  # MYSQL is the first field after PyObject_HEAD
        self.gc_callbacks = gc.callbacks  # the list itself: the program may empty it
        self.gc_get_threshold = gc.get_threshold  # platform (issue 14): a C call returning a tuple
        self.stop_flusher = threading.Event()
        self.flusher = None
        # Frames from these are not the program's own when naming a create_engine() call site.
        self.skip_dirs = (os.path.dirname(os.path.abspath(__file__)),)
        self.stdlib_dir = os.path.dirname(os.__file__)
        self.own_file = __file__

    # --- transport -------------------------------------------------------------
    def emit(self, kind, **fields):
        """Queue one event; during finalisation, write it at once (no flusher thread then)."""
        self._queue(kind, fields)
        if self.finalizing:
            self.flush()

    def emit_now(self, kind, **fields):
        """Queue one event and write the queue out now, unless a collection runs on this thread.

        For connection opens and closes: they come at connection cadence, and a program that
        leaves through os._exit() (no atexit, no flusher) must still have them on record."""
        self._queue(kind, fields)
        if self.ident() not in self.collecting:
            self.flush()

    def _queue(self, kind, fields):
        try:
            fields["k"] = kind
            fields["t"] = self.now()
            fields["src"] = "agent"
            fields["pid"] = self.pid
            fields["tid"] = self.native_tid()
            if len(self.queue) >= MAX_QUEUED:
                self.lost += 1
                return
            self.queue.append(fields)
        except Exception:
            pass

    def flush(self):
        """Encode queued events and write them in PIPE_BUF-sized, line-aligned chunks."""
        queue = self.queue
        chunk = []
        size = 0
        while queue:
            try:
                event = queue.popleft()
            except IndexError:
                break
            try:
                line = (self.dumps(event) + "\n").encode("utf-8", "replace")
            except Exception:
                self.lost += 1
                continue
            if size + len(line) > PIPE_BUF and chunk:
                self._write_chunk(chunk)
                chunk = []
                size = 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write_chunk(chunk)

    def _write_chunk(self, lines):
        data = b"".join(lines)
        try:
            self.write(self.fd, data)  # <= PIPE_BUF: atomic, all or nothing (EAGAIN)
        except BlockingIOError:
            self.lost += len(lines)
        except OSError:
            self.lost += len(lines)  # the tracer is gone: stay quiet

    def _flush_loop(self):
        while not self.stop_flusher.wait(FLUSH_INTERVAL_S):
            self.periodic()

    def periodic(self):
        """Report GC counters and losses when they changed, then flush."""
        try:
            counts = tuple(self.gc_counts)
            if counts != self.gc_counts_reported:
                self.gc_counts_reported = counts
                self.emit(self.ev.GC_COUNTS, by_gen={"0": counts[0], "1": counts[1], "2": counts[2]})
            if self.lost != self.lost_reported:
                self.emit(self.ev.AGENT_LOST, n=self.lost - self.lost_reported)
                self.lost_reported = self.lost
            self.flush()
        except Exception:
            pass

    def start_flusher(self):
        self.stop_flusher = threading.Event()
        self.flusher = threading.Thread(target=self._flush_loop, name="trace-quit-agent", daemon=True)
        self.flusher.start()

    def at_exit(self):
        """Registered first, so it runs after every other atexit handler: what dies after is shutdown."""
        self.finalizing = True
        self.stop_flusher.set()
        self.periodic()

    def after_fork_in_child(self):
        """A forked child: own pid, empty queue (the parent flushes its own), a new flusher."""
        try:
            parent = self.pid
            self.pid = os.getpid()
            self.queue.clear()
            self.collecting.clear()
            self.emit(self.ev.AGENT_START, forked_from=parent, **self._process_info())
            self.start_flusher()
        except Exception:
            pass

    def _process_info(self):
        return {"ppid": os.getppid(), "python": sys.version.split()[0], "executable": sys.executable,
                "argv": self.ev.redact_argv(list(sys.argv)), "basicsize": self.conn_offset,
                "gc_thresholds": list(gc.get_threshold()), "gc_enabled": gc.isenabled(),
                "implementation": sys.implementation.name}

    # --- garbage collector -----------------------------------------------------
    def gc_callback(self, phase, info):
        """gc.callbacks hook: note which collection runs on this thread; constant work."""
        try:
            ident = self.ident()
            if phase == "start":
                self.cid += 1
                gen = info["generation"]
                # The frame that set the collection off; its site is formatted only if this
                # collection is written out (most generation-0 ones are only counted), which
                # happens during the collection, while the frame is still running.
                state = [self.cid, gen, self.now(), self.getframe(1), False]
                self.collecting[ident] = state
                if gen > 0:
                    self._emit_gc_start(state)
            else:
                state = self.collecting.pop(ident, None)
                if state is None:
                    return
                gen = state[1]
                self.gc_counts[gen] += 1
                if state[4]:
                    self.emit(self.ev.GC_STOP, gen=gen, cid=state[0], collected=info.get("collected", 0),
                              uncollectable=info.get("uncollectable", 0))
        except Exception:
            pass

    def _emit_gc_start(self, state):
        # Young collections are frequent: one is only written out when it destroyed something
        # we track (then late, with its own start time); the others are only counted.
        state[4] = True
        try:
            name = self.current_thread().name
        except Exception:
            name = ""
        frame = state[3]
        state[3] = None  # hold no frame past this point
        # Name the program's line, not ours, when our own allocation set it off.
        while frame is not None and frame.f_code.co_filename == self.own_file:
            frame = frame.f_back
        site = "%s:%d" % (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ""
        event = {"k": self.ev.GC_START, "t": state[2], "src": "agent", "pid": self.pid, "tid": self.native_tid(),
                 "gen": state[1], "cid": state[0], "site": site, "thread": name}
        # platform (issue 14): the thresholds in effect now -- the program may have called
        # gc.set_threshold() since agent_start -- for the report's why_now (analysis/gcwhy.py).
        event["thresholds"] = self.gc_get_threshold()
        self.queue.append(event)

    def classify(self):
        """Why an object is being destroyed right now: (cause, generation, collection id)."""
        state = self.collecting.get(self.ident())
        if state is not None:
            if not state[4]:
                self._emit_gc_start(state)
            return "gc", state[1], state[0]
        if self.finalizing or self.is_finalizing():
            return "shutdown", None, None
        if self.gc_callback not in self.gc_callbacks:
            # The program removed our hook: a collection would look like a refcount drop.
            return "unknown", None, None
        return "refcount", None, None

    # --- mysqlclient -----------------------------------------------------------
    def on_conn_open(self, conn, args, kwargs):
        addr = id(conn) + self.conn_offset
        ref = self.weakref(conn, self._destroyed_callback(self.connections, addr, self.ev.CONN_DESTROY, "conn"))
        self.connections[addr] = ref
        info = _connect_params(args, kwargs)
        self.emit_now(self.ev.CONN_OPEN, conn=addr, stack=self.stack(2), thread=self.thread_name(), **info)

    def on_conn_fail(self, conn, exc):
        self.emit_now(self.ev.CONN_FAIL, conn=id(conn) + self.conn_offset, error=type(exc).__name__)

    def on_conn_close(self, conn):
        addr = id(conn) + self.conn_offset
        ref = self.connections.pop(addr, None)
        if ref is not None and ref() is conn:
            self.emit_now(self.ev.CONN_CLOSE, conn=addr, stack=self.stack(2), thread=self.thread_name())

    def _destroyed_callback(self, registry, key, kind, field):
        """A weakref callback: ``registry[key]`` died while still tracked — say why (``kind`` event)."""
        def destroyed(ref, agent=self, registry=registry, key=key, kind=kind, field=field):
            try:
                if registry.get(key) is not ref:
                    return  # closed (or disposed of) explicitly before, or the address was reused
                del registry[key]
                cause, gen, cid = agent.classify()
                agent.emit_now(kind, **{field: key, "cause": cause, "gen": gen, "cid": cid})
            except Exception:
                pass
        return destroyed

    def thread_name(self):
        try:
            return self.current_thread().name
        except Exception:
            return ""

    def stack(self, skip):
        """A short stack of the caller as ["file:line in func", ...], innermost first."""
        out = []
        try:
            frame = self.getframe(skip + 1)
            while frame is not None and len(out) < STACK_DEPTH:
                code = frame.f_code
                out.append("%s:%d in %s" % (code.co_filename, frame.f_lineno, code.co_name))
                frame = frame.f_back
        except Exception:
            pass
        return out

    # --- SQLAlchemy ------------------------------------------------------------
    def call_site(self, skip):
        """The first frame outside SQLAlchemy, the standard library and this agent."""
        try:
            frame = self.getframe(skip + 1)
            while frame is not None:
                filename = frame.f_code.co_filename
                if not self._is_library(filename):
                    return "%s:%d in %s" % (filename, frame.f_lineno, frame.f_code.co_name)
                frame = frame.f_back
        except Exception:
            pass
        return "?"

    def _is_library(self, filename):
        if filename.startswith("<") or filename.startswith(self.skip_dirs):
            return True
        # The standard library, but not packages installed beside it (a non-venv site-packages).
        return filename.startswith(self.stdlib_dir) and "-packages" not in filename[len(self.stdlib_dir):]

    def on_engine_create(self, engine, site):
        engine_id = id(engine)
        pool = getattr(engine, "pool", None)
        info = {"engine": engine_id, "site": site, "pool_class": type(pool).__name__}
        try:
            info["url"] = engine.url.render_as_string(hide_password=True)
        except Exception:
            info["url"] = self.ev.redact(str(getattr(engine, "url", "")))
        try:
            info["pool_size"] = pool.size()
            info["max_overflow"] = pool._max_overflow
        except Exception:
            pass
        try:
            self.engines[engine_id] = self.weakref(
                engine, self._destroyed_callback(self.engines, engine_id, self.ev.ENGINE_DESTROY, "engine"))
        except TypeError:
            pass
        self.emit(self.ev.ENGINE_CREATE, **info)
        if pool is not None:
            self._listen_pool(engine_id, pool)

    def _listen_pool(self, engine_id, pool):
        from sqlalchemy import event

        for name in POOL_EVENTS:
            try:
                event.listen(pool, name, self._pool_listener(engine_id, name))
            except Exception:
                pass  # an event this SQLAlchemy version does not have

    def _pool_listener(self, engine_id, name):
        def listener(*args, agent=self, engine_id=engine_id, name=name):
            try:
                dbapi_connection = args[0] if args else None
                conn = id(dbapi_connection) + agent.conn_offset if dbapi_connection is not None else None
                fields = {"engine": engine_id, "ev": name, "conn": conn}
                if len(args) > 2 and isinstance(args[2], BaseException):
                    # invalidate/soft_invalidate: the error is the evidence of a server that went away
                    exc = args[2]
                    fields["error"] = agent.ev.redact("%s: %s" % (type(exc).__name__, exc))[:200]
                agent.emit(agent.ev.POOL, **fields)
            except Exception:
                pass
        return listener

    def on_engine_dispose(self, engine):
        self.emit(self.ev.ENGINE_DISPOSE, engine=id(engine))


def _connect_params(args, kwargs):
    """Where a connection goes (never its password): MySQLdb.connect()'s arguments."""
    names = ("host", "user", "passwd", "db", "port", "unix_socket")
    params = dict(zip(names, args))
    params.update(kwargs)
    out = {}
    for key, alias in (("host", None), ("user", None), ("port", None), ("unix_socket", None),
                       ("db", "database")):
        value = params.get(key, params.get(alias) if alias else None)
        if value is not None:
            out[key] = value if isinstance(value, (int, str)) else str(value)
    return out


# --- hooks installed when the program imports the modules ---------------------------

def _hook_mysqldb(agent, module):
    """Wrap MySQLdb.connections.Connection's __init__ and close (it has no Python close)."""
    cls = getattr(module, "Connection", None)
    if cls is None or getattr(cls, "_trace_quit_hooked", False):
        return
    original_init = cls.__init__
    original_close = cls.close

    def __init__(self, *args, **kwargs):
        try:
            original_init(self, *args, **kwargs)
        except BaseException as exc:
            try:
                agent.on_conn_fail(self, exc)
            except Exception:
                pass
            raise
        try:
            agent.on_conn_open(self, args, kwargs)
        except Exception:
            pass

    def close(self):
        try:
            agent.on_conn_close(self)
        except Exception:
            pass
        return original_close(self)

    for wrapper, original in ((__init__, original_init), (close, original_close)):
        wrapper.__name__ = original.__name__
        wrapper.__qualname__ = getattr(original, "__qualname__", original.__name__)
        wrapper.__doc__ = original.__doc__
        wrapper.__wrapped__ = original
    cls.__init__ = __init__
    cls.close = close
    cls._trace_quit_hooked = True
    _report_module(agent, "MySQLdb")


def _hook_sqlalchemy(agent, module):
    """Wrap create_engine wherever SQLAlchemy exposes it, and Engine.dispose."""
    try:
        create = sys.modules["sqlalchemy.engine.create"]
        base = sys.modules["sqlalchemy.engine.base"]
    except KeyError:
        return
    original = create.create_engine
    if getattr(original, "_trace_quit_hooked", False):
        return

    def create_engine(*args, **kwargs):
        engine = original(*args, **kwargs)
        try:
            agent.on_engine_create(engine, agent.call_site(1))
        except Exception:
            pass
        return engine

    create_engine.__name__ = original.__name__
    create_engine.__doc__ = original.__doc__
    create_engine.__wrapped__ = original
    create_engine._trace_quit_hooked = True
    for name in ("sqlalchemy", "sqlalchemy.engine", "sqlalchemy.engine.create"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "create_engine", None) is original:
            mod.create_engine = create_engine

    original_dispose = base.Engine.dispose

    def dispose(self, *args, **kwargs):
        try:
            agent.on_engine_dispose(self)
        except Exception:
            pass
        return original_dispose(self, *args, **kwargs)

    dispose.__name__ = "dispose"
    dispose.__wrapped__ = original_dispose
    base.Engine.dispose = dispose
    agent.skip_dirs = agent.skip_dirs + (os.path.dirname(module.__file__),)
    _report_module(agent, "sqlalchemy")


def _report_module(agent, name):
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None)
    if version is None and name == "MySQLdb":
        version = ".".join(str(p) for p in getattr(module, "version_info", ())[:3])
    agent.emit(agent.ev.MODULE, name=name, version=version, file=getattr(module, "__file__", None))


HOOKS = {CONNECTION_MODULE: _hook_mysqldb, SQLALCHEMY_MODULE: _hook_sqlalchemy}


class _ImportHook:
    """A meta path finder that lets the real finders load a module, then hooks it."""

    def __init__(self, agent):
        self.agent = agent
        self.busy = set()

    def find_spec(self, name, path=None, target=None):
        if name not in HOOKS or name in self.busy:
            return None
        self.busy.add(name)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        finally:
            self.busy.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader_exec = spec.loader.exec_module
        agent = self.agent

        def exec_module(module):
            loader_exec(module)
            try:
                HOOKS[name](agent, module)
            except Exception:
                pass

        spec.loader.exec_module = exec_module
        return spec


AGENT = None


def install():
    """Start the agent if the tracer asked for it (the channel is in the environment)."""
    global AGENT
    path = os.environ.get(ENV_CHANNEL)
    if not path or AGENT is not None:
        return None
    try:
        agent = Agent(path, _load_events())
    except OSError:
        return None  # no tracer listening: stay out of the way
    AGENT = agent
    # First registered, last run: anything destroyed after it is destroyed by finalisation.
    atexit.register(agent.at_exit)
    gc.callbacks.append(agent.gc_callback)
    os.register_at_fork(after_in_child=agent.after_fork_in_child)
    sys.meta_path.insert(0, _ImportHook(agent))
    for name, hook in HOOKS.items():
        if name in sys.modules:
            hook(agent, sys.modules[name])
    agent.emit(agent.ev.AGENT_START, **agent._process_info())
    agent.start_flusher()
    return agent
