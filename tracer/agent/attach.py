"""The agent in a program that is already running: start, stop and self-inspection.

``trace-quit --pid`` runs a small bootstrap inside the target (tracer/attach: gdb's call into
the interpreter, or ``sys.remote_exec`` on 3.14+); the bootstrap loads this package by path
under ``_trace_quit_agent`` exactly as the launch-time ``sitecustomize`` does, then calls
``start``, ``stop`` or ``inspect`` here. Stdlib only, Python 3.8+, never raises, never prints.

What differs from launch mode, and why:

* what was there before: live MySQLdb connections and SQLAlchemy Engines are found once with
  ``gc.get_objects()`` and announced with the origin "before attach"; the GC state (counts,
  thresholds) goes in ``agent_start`` so the next collections can be explained;
* Engines created after attach are seen at ``Engine.__init__`` rather than ``create_engine``:
  a running service bound ``create_engine`` into its own module at import time
  (``from sqlalchemy import create_engine``), so replacing the module attribute now would
  never be called. The class attribute is looked up at every construction;
* everything installed is undone by ``stop()``: the ``gc.callbacks`` entry, the meta path
  finder, the atexit handler, every wrapped method, the pool listeners, the flusher thread and
  the channel fds (tests/system/test_attach.py checks it with a second injection). The one
  thing Python cannot undo is ``os.register_at_fork``: that callback stays and does nothing.
"""

import atexit
import gc
import os
import sys
import threading
import weakref

from _trace_quit_agent import runtime

ORIGIN_BEFORE_ATTACH = "before attach"
ENGINE_MODULE = "sqlalchemy.engine.base"
STOP_JOIN_S = 1.0

#: The running attachment in this process (one at a time), or None.
CURRENT = None


class Attachment:
    """What ``start`` installed, so that ``stop`` can take exactly that away again."""

    def __init__(self, agent):
        self.agent = agent
        self.active = True
        self.finder = None
        # (weak reference to the pool, event name, listener), removed on stop. Weak: a strong
        # reference would keep every leaked Engine's pool, and the connection in it, alive.
        self.pool_listeners = []
        self.prune_at = 64
        self.wrapped = []            # (owner, attribute name, original, had its own attribute)

    # --- what the program had before we came ---------------------------------------------
    def announce_existing(self):
        """Register the connections and Engines alive now (origin "before attach")."""
        agent = self.agent
        connections = engines = 0
        conn_cls = _class_of("MySQLdb.connections", "Connection")
        engine_cls = _class_of(ENGINE_MODULE, "Engine")
        if conn_cls is None and engine_cls is None:
            return 0, 0
        for obj in gc.get_objects():
            try:
                if conn_cls is not None and isinstance(obj, conn_cls):
                    if self._announce_connection(obj):
                        connections += 1
                elif engine_cls is not None and type(obj) is engine_cls:
                    agent.on_engine_create(obj, ORIGIN_BEFORE_ATTACH)
                    engines += 1
            except Exception:
                pass
        return connections, engines

    def _announce_connection(self, conn):
        agent = self.agent
        try:
            if not conn.open:
                return False  # closed already: mysql_close() was called, no COM_QUIT to come
        except Exception:
            return False
        addr = id(conn) + agent.conn_offset
        agent.connections[addr] = agent.weakref(
            conn, agent._destroyed_callback(agent.connections, addr, agent.ev.CONN_DESTROY, "conn"))
        info = {}
        try:
            info["host"] = conn.get_host_info()
        except Exception:
            pass
        agent.emit(agent.ev.CONN_OPEN, conn=addr, stack=[], origin=ORIGIN_BEFORE_ATTACH,
                   before_attach=True, thread="", **info)
        return True

    # --- hooks ------------------------------------------------------------------------------
    def hook_modules(self):
        """Hook MySQLdb and SQLAlchemy if they are loaded; a finder hooks them when they are."""
        if runtime.CONNECTION_MODULE in sys.modules:
            self.hook_mysqldb(sys.modules[runtime.CONNECTION_MODULE])
        if ENGINE_MODULE in sys.modules:
            self.hook_engine(sys.modules[ENGINE_MODULE])
        self.finder = _Finder(self)
        sys.meta_path.insert(0, self.finder)

    def hook_mysqldb(self, module):
        cls = getattr(module, "Connection", None)
        if cls is None or getattr(cls, "_trace_quit_hooked", False):
            return
        self._remember(cls, "__init__")
        self._remember(cls, "close")
        self._remember(cls, "_trace_quit_hooked")
        runtime._hook_mysqldb(self.agent, module)  # the launch path's wrappers, unchanged

    def hook_engine(self, module):
        """Wrap Engine.__init__ (every Engine, however create_engine was imported) and dispose."""
        cls = getattr(module, "Engine", None)
        if cls is None or getattr(cls, "_trace_quit_hooked", False):
            return
        agent = self.agent
        original_init = cls.__init__
        original_dispose = cls.dispose

        def __init__(engine, *args, **kwargs):
            original_init(engine, *args, **kwargs)
            try:
                if type(engine) is cls:  # not OptionEngine copies: they share the parent's pool
                    agent.on_engine_create(engine, agent.call_site(1))
            except Exception:
                pass

        def dispose(engine, *args, **kwargs):
            try:
                agent.on_engine_dispose(engine)
            except Exception:
                pass
            return original_dispose(engine, *args, **kwargs)

        for wrapper, original in ((__init__, original_init), (dispose, original_dispose)):
            wrapper.__name__ = original.__name__
            wrapper.__qualname__ = getattr(original, "__qualname__", original.__name__)
            wrapper.__doc__ = original.__doc__
            wrapper.__wrapped__ = original
        for name in ("__init__", "dispose", "_trace_quit_hooked"):
            self._remember(cls, name)
        cls.__init__ = __init__
        cls.dispose = dispose
        cls._trace_quit_hooked = True
        sqlalchemy = sys.modules.get("sqlalchemy")
        if sqlalchemy is not None and getattr(sqlalchemy, "__file__", None):
            agent.skip_dirs = agent.skip_dirs + (os.path.dirname(sqlalchemy.__file__),)
        runtime._report_module(agent, "sqlalchemy")

    def _remember(self, owner, name):
        own = name in vars(owner)
        self.wrapped.append((owner, name, vars(owner).get(name), own))

    def listen_pool(self, engine_id, pool):
        """The launch path's pool listeners, recorded so that stop() can remove them."""
        try:
            from sqlalchemy import event
        except Exception:
            return
        if len(self.pool_listeners) >= self.prune_at:  # amortised: drop the entries of dead pools
            self.pool_listeners = [entry for entry in self.pool_listeners if entry[0]() is not None]
            self.prune_at = max(64, 2 * len(self.pool_listeners))
        ref = weakref.ref(pool)
        for name in runtime.POOL_EVENTS:
            listener = self.agent._pool_listener(engine_id, name)
            try:
                event.listen(pool, name, listener)
                self.pool_listeners.append((ref, name, listener))
            except Exception:
                pass

    # --- undo -------------------------------------------------------------------------------
    def stop(self):
        """Flush, then take away everything start() installed. Safe to call twice."""
        if not self.active:
            return
        self.active = False
        agent = self.agent
        for step in (self._remove_hooks, self._remove_listeners, self._stop_flusher):
            try:
                step()
            except Exception:
                pass
        try:
            agent.periodic()  # the last counters and losses
        except Exception:
            pass
        fds = (agent.fd, agent.keepalive_fd)
        _silence(agent)
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if runtime.AGENT is agent:
            runtime.AGENT = None

    def _remove_hooks(self):
        agent = self.agent
        try:
            gc.callbacks.remove(agent.gc_callback)
        except ValueError:
            pass
        if self.finder is not None:
            try:
                sys.meta_path.remove(self.finder)
            except ValueError:
                pass
        atexit.unregister(agent.at_exit)
        # Newest first: a name wrapped twice gets back what it had first.
        for owner, name, original, own in reversed(self.wrapped):
            try:
                if own:
                    setattr(owner, name, original)
                elif name in vars(owner):
                    delattr(owner, name)
            except Exception:
                pass
        self.wrapped = []

    def _remove_listeners(self):
        from sqlalchemy import event

        for ref, name, listener in self.pool_listeners:
            pool = ref()
            if pool is None:
                continue
            try:
                event.remove(pool, name, listener)
            except Exception:
                pass
        self.pool_listeners = []

    def _stop_flusher(self):
        agent = self.agent
        agent.stop_flusher.set()
        flusher = agent.flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(STOP_JOIN_S)


def _silence(agent):
    """After stop the agent says nothing more: a wrapper the program kept a reference to
    (``from MySQLdb.connections import Connection`` binds the class, not the method, but a
    saved bound method would do) or a weakref callback still due must find a mute agent
    and must never write to a closed fd number the program may have reused."""
    def nothing(*args, **kwargs):
        return None

    for name in ("emit", "emit_now", "flush", "periodic", "on_conn_open", "on_conn_fail",
                 "on_conn_close", "on_engine_create", "on_engine_dispose", "after_fork_in_child",
                 "_listen_pool"):
        setattr(agent, name, nothing)
    agent.connections.clear()
    agent.engines.clear()
    agent.queue.clear()
    agent.fd = agent.keepalive_fd = -1


class _Finder:
    """Hooks MySQLdb / SQLAlchemy's engine module when the program imports them after attach."""

    def __init__(self, attachment):
        self.attachment = attachment
        self.busy = set()
        self.hooks = {runtime.CONNECTION_MODULE: attachment.hook_mysqldb, ENGINE_MODULE: attachment.hook_engine}

    def find_spec(self, name, path=None, target=None):
        if name not in self.hooks or name in self.busy or not self.attachment.active:
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
        hook = self.hooks[name]

        def exec_module(module):
            loader_exec(module)
            try:
                hook(module)
            except Exception:
                pass

        spec.loader.exec_module = exec_module
        return spec


def _class_of(module_name, name):
    module = sys.modules.get(module_name)
    return getattr(module, name, None) if module is not None else None


def _fork_callback(attachment):
    def after_in_child():
        if attachment.active:
            attachment.agent.after_fork_in_child()
    return after_in_child


def start(channel_path):
    """Start the agent on ``channel_path`` in this running process; return a status dict."""
    global CURRENT
    if CURRENT is not None and CURRENT.active:
        return {"ok": True, "already": True}
    if runtime.AGENT is not None:
        return {"ok": False, "error": "the program was started under trace-quit: its agent is already running"}
    agent = runtime.Agent(channel_path, runtime._load_events())
    attachment = Attachment(agent)
    agent._listen_pool = attachment.listen_pool
    runtime.AGENT = agent
    CURRENT = attachment
    atexit.register(agent.at_exit)
    gc.callbacks.append(agent.gc_callback)
    os.register_at_fork(after_in_child=_fork_callback(attachment))
    attachment.hook_modules()
    if runtime.CONNECTION_MODULE in sys.modules:
        runtime._report_module(agent, "MySQLdb")
    info = agent._process_info()
    info.update(attached=True, gc_counts=list(gc.get_count()))
    try:
        info["gc_stats"] = gc.get_stats()
    except Exception:
        pass
    agent.emit(agent.ev.AGENT_START, **info)
    connections, engines = attachment.announce_existing()
    agent.flush()
    agent.start_flusher()
    return {"ok": True, "connections": connections, "engines": engines, "python": sys.version.split()[0]}


def stop():
    """Stop the running attachment, if any; return a status dict."""
    global CURRENT
    attachment = CURRENT
    if attachment is None:
        return {"ok": True, "attached": False}
    CURRENT = None
    attachment.stop()
    return {"ok": True, "attached": True}


def inspect():
    """What trace-quit could have left behind, as plain data (for the detach test)."""
    out = {"gc_callbacks": [_describe(cb) for cb in gc.callbacks],
           "meta_path": [type(f).__module__ + "." + type(f).__name__ for f in sys.meta_path],
           # The agent's flusher is "trace-quit-agent"; the program's own threads come and go.
           "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("trace-quit")),
           "agent_running": runtime.AGENT is not None,
           "methods": {}}
    for module_name, cls_name, names in (("MySQLdb.connections", "Connection", ("__init__", "close")),
                                         (ENGINE_MODULE, "Engine", ("__init__", "dispose")),
                                         ("sqlalchemy.engine.create", None, ("create_engine",))):
        module = sys.modules.get(module_name)
        owner = getattr(module, cls_name, None) if cls_name else module
        if owner is None:
            continue
        for name in names:
            value = vars(owner).get(name)
            out["methods"]["%s.%s" % (cls_name or module_name, name)] = _describe(value)
        out["methods"]["%s._trace_quit_hooked" % (cls_name or module_name)] = \
            "_trace_quit_hooked" in vars(owner)
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if "trace-quit" in target:
            fds.append(target)
    out["trace_quit_fds"] = sorted(fds)
    # Not atexit: atexit.unregister() empties the slot but _ncallbacks() still counts it.
    return out


def _describe(func):
    """An identity that survives JSON: the id and where the code lives."""
    if func is None:
        return None
    code = getattr(func, "__code__", None)
    return {"id": id(func), "name": getattr(func, "__qualname__", repr(func)),
            "file": code.co_filename if code is not None else None}
