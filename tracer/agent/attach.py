"""The agent in a program that is already running: start, stop and self-inspection.

``trace-quit --pid`` runs a small bootstrap inside the target (tracer/attach: a pending call
queued through ptrace, run by the main thread between two bytecodes); the bootstrap loads
this package by path under ``_trace_quit_agent`` exactly as the launch-time ``sitecustomize`` does, then calls
``start``, ``stop`` or ``inspect`` here. Stdlib only, Python 3.8+, never raises, never prints.

The agent is runtime.py's, started with ``runtime.start(channel, attached=True)`` and undone
by ``Agent.stop()`` (gc.callbacks entry, import hook, atexit handler, every wrapped method,
the channel fds; the fork handler Python cannot unregister does nothing after it). What is
attach-specific lives here:

* what was there before: live MySQLdb and PyMySQL connections and SQLAlchemy Engines are
  found once with ``gc.get_objects()``, reading only Python-level state (a connection's
  ``open`` flag, a PyMySQL one's ``_sock``; never a call into the client library), and
  announced with the origin "before attach" (a PyMySQL one keyed by its socket's inode, as
  the Tracker keys those opened later);
* Engines created after attach are seen at ``Engine.__init__`` rather than ``create_engine``:
  a running service bound ``create_engine`` into its own module at import time
  (``from sqlalchemy import create_engine``), so a new module attribute would never be
  called. The class attribute is looked up at every construction. The wrapper goes in the
  agent's ``restore`` list, so ``Agent.stop()`` puts the original back;
* pool listeners go only on the pools of Engines created after attach, and are never removed
  (made inert at stop): see ``Attachment.listen_pool`` for why.

tests/system/test_attach.py checks the whole round trip with a second injection (``inspect``).
"""

import gc
import os
import sys
import threading

from _trace_quit_agent import mysqldb, process, runtime, sockets, sqlalchemy as sqlalchemy_hooks

ORIGIN_BEFORE_ATTACH = "before attach"
ENGINE_MODULE = "sqlalchemy.engine.base"
PYMYSQL_MODULE = "pymysql.connections"

#: The running attachment in this process (one at a time), or None.
CURRENT = None


class Attachment:
    """What attach adds to the runtime's agent, so that ``stop`` can take it away again."""

    def __init__(self):
        self.agent = None
        self.announcing = None  # the thread inside announce_existing: those pools are in use (listen_pool)

    def prepare(self, agent):
        """runtime.start's ``prepare``: before anything is hooked, so no Engine escapes us."""
        self.agent = agent
        agent._listen_pool = self.listen_pool
        agent.more_hooks[sqlalchemy_hooks.SQLALCHEMY_MODULE] = _hook_engine_init

    # --- what the program had before we came ---------------------------------------------
    def announce_existing(self):
        """Register the connections and Engines alive now (origin "before attach")."""
        agent = self.agent
        conn_cls = _class_of(mysqldb.CONNECTION_MODULE, "Connection")
        engine_cls = _class_of(ENGINE_MODULE, "Engine")
        # PyMySQL's, when the program imported it (its hooks went in at start: agent.pymysql).
        pymysql_cls = _class_of(PYMYSQL_MODULE, "Connection") if agent.pymysql is not None else None
        if conn_cls is None and engine_cls is None and pymysql_cls is None:
            return 0, 0
        self.announcing = threading.get_ident()
        try:
            return self._scan(conn_cls, engine_cls, pymysql_cls)
        finally:
            self.announcing = None

    def _scan(self, conn_cls, engine_cls, pymysql_cls):
        agent = self.agent
        connections = engines = 0
        for obj in gc.get_objects():
            try:
                if conn_cls is not None and isinstance(obj, conn_cls):
                    if self._announce_connection(obj):
                        connections += 1
                elif pymysql_cls is not None and isinstance(obj, pymysql_cls):
                    if self._announce_pymysql(obj):
                        connections += 1
                elif engine_cls is not None and type(obj) is engine_cls:
                    ref = agent.engines.get(id(obj))
                    if ref is None or ref() is not obj:  # not one created since the hook went in
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
        ref = agent.connections.get(addr)
        if ref is not None and ref() is conn:
            return False  # opened by another thread since the hooks went in: announced already
        agent.connections[addr] = agent.weakref(
            conn, agent._destroyed_callback(agent.connections, addr, agent.ev.CONN_DESTROY, "conn"))
        # Nothing is called on the connection (no get_host_info()): another thread may be inside
        # libmysqlclient with it right now. Its peer is the kernel layer's to tell.
        agent.emit(agent.ev.CONN_OPEN, conn=addr, stack=[], origin=ORIGIN_BEFORE_ATTACH,
                   before_attach=True, thread="")
        return True

    def _announce_pymysql(self, conn):
        """A PyMySQL connection open now (its socket not None): tracked by its socket's inode,
        as one opened after attach would be (tracer/agent/pymysql.py: Tracker.register)."""
        tracker = self.agent.pymysql
        if getattr(conn, "_sock", None) is None:
            return False  # closed (or never connected): no COM_QUIT to come
        if tracker.conn_of(conn) is not None:
            return False  # connected by another thread since the hooks went in: announced already
        return tracker.register(conn, [], "", origin=ORIGIN_BEFORE_ATTACH, before_attach=True)

    # --- pools --------------------------------------------------------------------------------
    def listen_pool(self, engine_id, pool):
        """The runtime's pool listeners (Agent._listen_pool), for Engines created after attach only.

        SQLAlchemy's listener collections are deques that event dispatch iterates without a
        lock: adding to or removing from one while another thread dispatches that pool's events
        raises "deque mutated during iteration" in the program's thread (seen under load,
        tests/system/test_attach_stress.py). So a pool already in use when we came (an Engine
        alive before attach) gets no listener, a new Engine's pool gets them in its creating
        thread before anyone else can use it, and stop() removes none: they go inert instead
        (they check ``agent.stopped``) and die with their pool."""
        agent = self.agent
        if agent.stopped or self.announcing == threading.get_ident():
            return
        try:
            from sqlalchemy import event
        except Exception:
            return
        for name in sqlalchemy_hooks.POOL_EVENTS:
            listener = _inert_after_stop(agent, agent._pool_listener(engine_id, name))
            try:
                event.listen(pool, name, listener)
            except Exception:
                pass  # an event this SQLAlchemy version does not have

    # --- undo -------------------------------------------------------------------------------
    def stop(self):
        """Flush and undo (Agent.stop()). Safe to call twice."""
        try:
            self.agent.stop()
        except Exception:
            pass


def _inert_after_stop(agent, listener):
    def pool_listener(*args):
        if not agent.stopped:
            listener(*args)
    return pool_listener


def _hook_engine_init(agent, module):
    """Wrap Engine.__init__: every Engine, however the program reached create_engine."""
    base = sys.modules.get(ENGINE_MODULE)
    cls = getattr(base, "Engine", None)
    if cls is None or getattr(cls.__dict__.get("__init__"), "_trace_quit_hooked", False):
        return
    original = cls.__init__
    own = cls.__dict__.get("__init__", runtime._DELETE)

    def __init__(engine, *args, **kwargs):
        original(engine, *args, **kwargs)
        try:
            # Not OptionEngine copies (execution_options()): they share the parent's pool.
            if type(engine) is cls and not agent.stopped:
                agent.on_engine_create(engine, agent.call_site(1))
        except Exception:
            pass

    sockets.wrap(original, __init__)._trace_quit_hooked = True
    cls.__init__ = __init__
    agent.restore.append((cls, "__init__", own, __init__))


def _class_of(module_name, name):
    module = sys.modules.get(module_name)
    return getattr(module, name, None) if module is not None else None


def start(channel_path):
    """Start the agent on ``channel_path`` in this running process; return a status dict."""
    global CURRENT
    running = runtime.AGENT
    if running is not None and not running.stopped:
        if running.attached:
            return {"ok": True, "already": True}
        return {"ok": False, "error": "the program was started under trace-quit: its agent is already running"}
    attachment = Attachment()
    try:
        agent = runtime.start(channel_path, attached=True, prepare=attachment.prepare)
    except BaseException:
        if attachment.agent is not None:  # hooked part of the way: take it all back
            attachment.stop()
        raise
    CURRENT = attachment
    connections, engines = attachment.announce_existing()
    agent.flush()
    return {"ok": True, "connections": connections, "engines": engines, "python": sys.version.split()[0]}


def stop():
    """Stop the running attachment, if any; return a status dict."""
    global CURRENT
    attachment = CURRENT
    if attachment is None:
        return {"ok": True, "attached": False}
    CURRENT = None
    attachment.stop()
    if runtime.AGENT is attachment.agent:
        runtime.AGENT = None
    return {"ok": True, "attached": True}


def inspect():
    """What trace-quit could have left behind, as plain data (for the detach test)."""
    agent = runtime.AGENT
    out = {"gc_callbacks": [_describe(cb) for cb in gc.callbacks],
           "meta_path": [type(f).__module__ + "." + type(f).__name__ for f in sys.meta_path],
           # The agent has no thread; a "trace-quit" one would be a regression.
           "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("trace-quit")),
           "agent_running": agent is not None and not agent.stopped,
           "methods": {}}
    for module_name, cls_name, names in (("MySQLdb.connections", "Connection", ("__init__", "close")),
                                         (ENGINE_MODULE, "Engine", ("__init__", "dispose")),
                                         ("sqlalchemy.engine.create", None, ("create_engine",)),
                                         ("sqlalchemy", None, ("create_engine",)),
                                         ("os", None, process.EXEC_FUNCTIONS + ("_exit",))):
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
