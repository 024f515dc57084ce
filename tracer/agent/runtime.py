"""The agent inside the traced program: one ``Agent`` per process, started, and undone by ``stop``.

The ``Agent`` is made of parts of one job each, which reach one another only through it:
``Channel`` (channel.py: the queue and the FIFO), ``Collector`` (collector.py: the GC
callback, the cause of a destruction), ``Stacks`` (stacks.py: call stacks and sites),
``Process`` (process.py: exit, exec, fork), and the libraries' sides of it,
``MySQLdbConnections`` (mysqldb.py) and ``SQLAlchemyEngines`` (sqlalchemy.py). The modules
hooked as the program imports them are in ``HOOKS`` (imports.py; the other drivers:
pymysql.py, connector.py, aio.py).

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
from _trace_quit_agent import aio, channel, collector, connector, imports, mysqldb, process, stacks
from _trace_quit_agent import pymysql as pymysql_hooks, sqlalchemy as sqlalchemy_hooks
from _trace_quit_agent.channel import Channel
from _trace_quit_agent.collector import Collector
from _trace_quit_agent.mysqldb import MySQLdbConnections
from _trace_quit_agent.process import Process
from _trace_quit_agent.sqlalchemy import SQLAlchemyEngines
from _trace_quit_agent.stacks import Stacks

#: The agent's own files: a collection set off by their allocations names the program's line.
OWN_FILES = frozenset((__file__, channel.__file__, collector.__file__, imports.__file__, mysqldb.__file__,
                       process.__file__, sqlalchemy_hooks.__file__, stacks.__file__))


def _load_events():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_trace_quit_events", EVENTS_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["_trace_quit_events"] = module
    return module


class Agent(Channel, Collector, Stacks, Process, MySQLdbConnections, SQLAlchemyEngines):
    """One per process: the channel, the GC bookkeeping and the registries of live objects.

    Its parts are mixins, not objects of their own: a hot path calls ``self.flush()``, not
    ``self.channel.flush()``, one attribute lookup fewer per call (tests/bench/agent_path.py)."""

    def __init__(self, channel_path, ev, attached=False):
        self._open_channel(channel_path)
        self._init_stacks(ev)
        self._init_collector()
        self._init_process()
        self._init_mysqldb()
        self._init_sqlalchemy()
        self.ev = ev
        self.attached = attached
        self.stopped = False
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
                pymysql_hooks.unhook(module)
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


#: module name -> hook(agent, module): the libraries the agent hooks as the program imports
#: them (tracer/agent/imports.py); PyMySQL's module also names the drivers it does not probe.
HOOKS = {name: hook for library in (mysqldb, sqlalchemy_hooks, pymysql_hooks, connector, aio)
         for name, hook in library.hooks().items()}


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
