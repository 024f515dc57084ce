"""The agent's runtime inside the traced program: GC, mysqlclient and SQLAlchemy hooks.

Rules it lives by (it runs inside someone else's program):

* stdlib only, Python 3.8+; never prints; never raises into user code (every hook is
  wrapped, and a failing hook only goes quiet); no thread of its own;
* GC callbacks do constant, cheap work, and write only when no other thread could run
  Python meanwhile (tracer/agent/collector.py);
* events are queued and written in batches at safe points, through a FIFO it checks is
  still its own (tracer/agent/channel.py);
* after start-up the hot paths reach nothing through module globals, only through the
  ``Agent`` instance: during interpreter finalisation module dicts are cleared, and the
  destructions that happen then are exactly the ``shutdown`` cause we must still record.
  The agent stays reachable from ``gc.callbacks`` (cleared last, in ``_PyGC_Fini``), which
  keeps its registry of weak references — and so their callbacks — alive to the end.
"""

import atexit
import functools
import gc
import operator
import os
import sys
import threading
import time
import weakref

from _trace_quit_agent import ENV_CHANNEL, EVENTS_PY
from _trace_quit_agent import channel, collector, imports, mysqldb, process, stacks
from _trace_quit_agent.channel import Channel
from _trace_quit_agent.collector import Collector
from _trace_quit_agent.imports import report_module
from _trace_quit_agent.mysqldb import MySQLdbConnections
from _trace_quit_agent.process import Process
from _trace_quit_agent.stacks import Stacks

SQLALCHEMY_MODULE = "sqlalchemy"
POOL_EVENTS = ("connect", "checkout", "checkin", "close", "detach", "close_detached",
               "invalidate", "soft_invalidate")

#: The agent's own files: a collection set off by their allocations names the program's line.
OWN_FILES = frozenset((__file__, channel.__file__, collector.__file__, imports.__file__, mysqldb.__file__,
                       process.__file__, stacks.__file__))


def _load_events():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_trace_quit_events", EVENTS_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["_trace_quit_events"] = module
    return module


class Agent(Channel, Collector, Stacks, Process, MySQLdbConnections):
    """One per process: the channel, the GC bookkeeping and the registries of live objects."""

    def __init__(self, channel_path, ev, attached=False):
        self._open_channel(channel_path)
        self._init_stacks(ev)
        self._init_collector()
        self._init_process()
        self._init_mysqldb()
        self.ev = ev
        self.attached = attached
        self.stopped = False
        self.engines = {}        # engine id -> weakref
        self.pymysql = None      # PyMySQL connections (agent/pymysql.py), once it is imported
        self.socket_trackers = {}  # driver -> sockets.SocketTracker (agent/connector.py, agent/aio.py)
        self.delete_marker = _DELETE
        self.restore = []        # (owner, attribute, original, ours): undone by stop()
        self.more_hooks = {}     # module name -> hook(agent, module), run after HOOKS' (attach.py)
        # Bound once, so the hot paths and finalisation never look up module globals.
        self.now = time.monotonic_ns
        self.native_tid = threading.get_native_id
        self.ident = threading.get_ident
        # Thread names without threading.current_thread(), which would register a dummy Thread
        # (visible in threading.enumerate()) for a thread threading did not start.
        self.threads = threading._active
        self.is_finalizing = sys.is_finalizing
        self.weakref = weakref.ref
        self.partial = functools.partial
        self.call = operator.methodcaller("__call__")
        self.own_files = OWN_FILES

    def stop(self):
        """Leave the program as it was: hooks restored, GC callback removed, fds closed."""
        if self.stopped:
            return
        try:
            self.flush()
        except Exception:
            pass
        self.stopped = True
        try:
            self.gc_callbacks.remove(self.gc_callback)
        except ValueError:
            pass
        try:
            atexit.unregister(self.at_exit)
        except Exception:
            pass
        for owner, name, original, ours in reversed(self.restore):
            try:
                if owner.__dict__.get(name) is not ours:
                    continue  # the program replaced it since: leave theirs (ours is inert now)
                if original is _DELETE:
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)
            except Exception:
                pass
        self.restore = []
        try:  # PyMySQL's wrapped methods (tracer/agent/pymysql.py keeps its own originals)
            module = sys.modules.get("pymysql.connections")
            if module is not None and self.pymysql is not None:
                _pymysql_hooks.unhook(module)
        except Exception:
            pass
        try:
            sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "agent", None) is not self]
        except Exception:
            pass
        for fd in (self.fd, self.keepalive_fd):
            if self._is_ours(fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = self.keepalive_fd = -1
        self.queue.clear()
        self.connections.clear()
        self.engines.clear()
        self.stack_cache.clear()
        self.params_cache.clear()

    # --- SQLAlchemy ------------------------------------------------------------

    def on_engine_create(self, engine, site, chain=None):
        engine_id = id(engine)
        pool = getattr(engine, "pool", None)
        info = {"engine": engine_id, "site": site, "pool_class": type(pool).__name__}
        if chain:
            info["chain"] = chain
        # hide_password hides the userinfo only: ``?passwd=`` in the query stays, so the
        # redaction runs on every form (tests/security/test_secrets_in_urls.py).
        try:
            info["url"] = self.ev.redact(engine.url.render_as_string(hide_password=True))
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
                conn = agent.conn_of(dbapi_connection) if dbapi_connection is not None else None
                fields = {"engine": engine_id, "ev": name, "conn": conn}
                if len(args) > 2 and isinstance(args[2], BaseException):
                    # invalidate/soft_invalidate: the error is the evidence of a server that went away
                    exc = args[2]
                    fields["error"] = agent.ev.redact("%s: %s" % (type(exc).__name__, exc))[:200]
                agent.emit(agent.ev.POOL, **fields)
            except Exception:
                pass
        return listener

    def conn_of(self, dbapi_connection):
        """The ``conn`` key of a DB-API connection: its MYSQL*, or a socket's inode (PyMySQL,
        mysql-connector, and the asyncio drivers behind SQLAlchemy's adapter's ``_connection``)."""
        tracker = self.pymysql
        if tracker is not None:
            key = tracker.conn_of(dbapi_connection)
            if key is not None:
                return key
        if self.socket_trackers:
            inner = getattr(dbapi_connection, "_connection", None)
            for tracker in self.socket_trackers.values():
                for obj in (dbapi_connection, inner):
                    key = tracker.conn_of(obj) if obj is not None else None
                    if key is not None:
                        return key
        return id(dbapi_connection) + self.conn_offset

    def on_engine_dispose(self, engine):
        self.emit(self.ev.ENGINE_DISPOSE, engine=id(engine))


# --- hooks installed when the program imports the modules ---------------------------


def _hook_sqlalchemy(agent, module):
    """Wrap create_engine wherever SQLAlchemy exposes it, and Engine.dispose."""
    try:
        create = sys.modules["sqlalchemy.engine.create"]
        base = sys.modules["sqlalchemy.engine.base"]
    except KeyError:
        return
    original = create.create_engine
    if getattr(original, "_trace_quit_hooked", False) or getattr(base.Engine.dispose, "_trace_quit_hooked", False):
        return

    def create_engine(*args, **kwargs):
        engine = original(*args, **kwargs)
        try:
            agent.on_engine_create(engine, agent.call_site(1), agent.call_chain(1))
        except Exception:
            pass
        return engine

    create_engine.__name__ = original.__name__
    create_engine.__doc__ = original.__doc__
    create_engine.__wrapped__ = original
    create_engine._trace_quit_hooked = True
    # Attached to a running program: its modules bound create_engine at import time, so a new
    # module attribute would go unseen; tracer/agent/attach.py wraps Engine.__init__ instead
    # (and wrapping both would announce an Engine twice).
    for name in () if agent.attached else ("sqlalchemy", "sqlalchemy.engine", "sqlalchemy.engine.create"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "create_engine", None) is original:
            mod.create_engine = create_engine
            agent.restore.append((mod, "create_engine", original, create_engine))

    original_dispose = base.Engine.dispose

    def dispose(self, *args, **kwargs):
        try:
            agent.on_engine_dispose(self)
        except Exception:
            pass
        return original_dispose(self, *args, **kwargs)

    dispose.__name__ = "dispose"
    dispose.__wrapped__ = original_dispose
    dispose._trace_quit_hooked = True
    base.Engine.dispose = dispose
    agent.restore.append((base.Engine, "dispose", original_dispose, dispose))
    agent.skip_dirs = agent.skip_dirs + (os.path.dirname(module.__file__),)
    report_module(agent, "sqlalchemy")


HOOKS = {SQLALCHEMY_MODULE: _hook_sqlalchemy}
HOOKS.update(mysqldb.hooks())

# --- PyMySQL, and MySQL drivers the agent does not probe: tracer/agent/pymysql.py --------
from _trace_quit_agent import pymysql as _pymysql_hooks  # noqa: E402

HOOKS.update(_pymysql_hooks.hooks())
# --- mysql-connector-python, aiomysql, asyncmy: tracer/agent/connector.py, tracer/agent/aio.py --
from _trace_quit_agent import aio as _aio_hooks, connector as _connector_hooks  # noqa: E402

HOOKS.update(_connector_hooks.hooks())
HOOKS.update(_aio_hooks.hooks())


#: Marks an attribute stop() deletes rather than restores (it did not exist before us).
_DELETE = object()

AGENT = None


def start(channel_path, *, attached=False, prepare=None):
    """Start an agent writing to the FIFO ``channel_path``; return it (``Agent.stop()`` undoes it).

    ``attached``: loaded into a program already running (tracer/agent/attach.py), so its
    atexit handler runs first, not last, and create_engine is not wrapped. ``prepare(agent)``
    runs before anything is hooked (attach.py adds its ``more_hooks`` there). Raises OSError
    when the channel cannot be opened."""
    global AGENT
    agent = Agent(channel_path, _load_events() if "_trace_quit_events" not in sys.modules
                  else sys.modules["_trace_quit_events"], attached=attached)
    AGENT = agent
    if prepare is not None:
        prepare(agent)
    # First registered, last run: anything destroyed after it is destroyed by finalisation.
    atexit.register(agent.at_exit)
    gc.callbacks.append(agent.gc_callback)
    # Fork handlers cannot be unregistered: after stop() they do nothing.
    os.register_at_fork(before=agent.before_fork, after_in_child=agent.after_fork_in_child)
    process.hook_exits(agent)
    imports.hook_imports(agent, HOOKS)
    agent.emit(agent.ev.AGENT_START, **agent._process_info())
    return agent


def install():
    """Start the agent if the tracer asked for it (the channel is in the environment)."""
    path = os.environ.get(ENV_CHANNEL)
    if not path or (AGENT is not None and not AGENT.stopped):
        return None
    try:
        return start(path)
    except OSError:
        return None  # no tracer listening: stay out of the way
