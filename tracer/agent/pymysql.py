"""The agent's PyMySQL hooks, and the notice of MySQL drivers the agent does not probe.

PyMySQL (pure Python) ends a connection in one of two ways (docs/pymysql.md):

* ``Connection.close()`` writes COM_QUIT, then closes the socket (``conn_close``);
* ``Connection.__del__`` is ``_force_close``: it closes the socket *without* COM_QUIT, so
  every connection destroyed open — by the GC, a refcount drop or the interpreter's
  finalisation — is an aborted client on the server (``conn_destroy``, ``quit`` False).
  ``_force_close`` also runs after a failed read or write (the server or the network ended
  the connection): ``conn_destroy`` with cause ``server``.

PyMySQL has no ``MYSQL*``: a PyMySQL connection's ``conn`` is the inode of its socket, which
the kernel layer reads from the same fd (``bpf_sock_close.ino``); ``fd`` and ``obj`` (the
``Connection``'s id) are carried too. Every record says ``driver: "pymysql"``.

Loaded by the agent's import hook (imports.py) when the program imports ``pymysql.connections``;
same rules as runtime.py (stdlib only, no prints, never raise into user code, nothing reached
through module globals once hooked: finalisation destroys connections too).
"""

import os
import sys

DRIVER = "pymysql"
CONNECTION_MODULE = "pymysql.connections"

#: MySQL drivers whose connections the agent does not see (module -> the name reported).
#: The kernel layer still sees their sockets; the report says they were in use.
#: (mysql-connector-python, aiomysql and asyncmy are hooked: tracer/agent/connector.py, aio.py.)
UNPROBED_DRIVERS = {
    "mariadb": "mariadb (MariaDB Connector/Python)",
}


def socket_key(sock):
    """``(inode, fd)`` of a connected socket object, or ``(None, None)`` when unreadable."""
    try:
        fd = sock.fileno()
        return os.fstat(fd).st_ino, fd
    except Exception:
        return None, None


class Tracker:
    """The live PyMySQL connections: ``id(Connection)`` -> (socket object, inode, fd)."""

    def __init__(self, agent):
        self.agent = agent
        self.live = {}
        self.socket_key = socket_key
        self.exc_info = sys.exc_info

    def conn_of(self, obj):
        """The ``conn`` key of a live PyMySQL connection object, else None."""
        entry = self.live.get(id(obj))
        if entry is not None and entry[0] is getattr(obj, "_sock", None):
            return entry[1]
        return None

    def _take(self, obj):
        """Stop tracking ``obj``'s socket; return its entry if that socket is still the one open."""
        entry = self.live.pop(id(obj), None)
        if entry is None or entry[0] is not getattr(obj, "_sock", None) or entry[0] is None:
            return None
        return entry

    def on_connect(self, obj):
        self.register(obj, self.agent.stack(3), self.agent.thread_name())  # the same depth as before

    def register(self, obj, stack, thread, **extra):
        """Track ``obj``'s open socket and say ``conn_open``; False when it has none (closed).
        ``extra``: attach's origin "before attach" (tracer/agent/attach.py)."""
        agent = self.agent
        sock = getattr(obj, "_sock", None)
        if sock is None:
            return False
        ino, fd = self.socket_key(sock)
        if ino is None:
            return False
        self.live[id(obj)] = (sock, ino, fd)
        info = dict(extra)
        for key, attr in (("host", "host"), ("port", "port"), ("user", "user"), ("db", "db"),
                          ("unix_socket", "unix_socket")):
            value = getattr(obj, attr, None)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if value is not None:
                info[key] = value if isinstance(value, (int, str)) else str(value)
        if info.get("unix_socket"):
            info.pop("port", None)
        agent.emit(agent.ev.CONN_OPEN, conn=ino, driver=DRIVER, fd=fd, obj=id(obj), stack=stack, thread=thread,
                   **info)
        return True

    def on_close(self, obj):
        entry = self._take(obj)
        if entry is not None:
            agent = self.agent
            agent.emit(agent.ev.CONN_CLOSE, conn=entry[1], driver=DRIVER, fd=entry[2], quit=True,
                           stack=agent.stack(2), thread=agent.thread_name())

    def on_del(self, obj):
        entry = self._take(obj)
        if entry is not None:
            agent = self.agent
            cause, gen, cid = agent.classify()
            agent.emit(agent.ev.CONN_DESTROY, conn=entry[1], driver=DRIVER, fd=entry[2], quit=False,
                           cause=cause, gen=gen, cid=cid)

    def on_force_close(self, obj):
        """``_force_close`` outside close()/__del__: PyMySQL gave up the socket after an error."""
        entry = self._take(obj)
        if entry is not None:
            agent = self.agent
            exc = self.exc_info()[1]
            agent.emit(agent.ev.CONN_DESTROY, conn=entry[1], driver=DRIVER, fd=entry[2], quit=False,
                           cause=agent.ev.SERVER, gen=None, cid=None,
                           error=type(exc).__name__ if exc is not None else "eof")


def _wrap(original, wrapper):
    wrapper.__name__ = original.__name__
    wrapper.__qualname__ = getattr(original, "__qualname__", original.__name__)
    wrapper.__doc__ = original.__doc__
    wrapper.__wrapped__ = original
    return wrapper


def hook(agent, module):
    """Wrap ``pymysql.connections.Connection``'s connect, close, _force_close and __del__."""
    cls = getattr(module, "Connection", None)
    if cls is None or cls.__dict__.get("_trace_quit_hooked", False):
        return
    tracker = getattr(agent, "pymysql", None)
    if tracker is None:
        tracker = agent.pymysql = Tracker(agent)
    original_connect = cls.connect
    original_close = cls.close
    original_force_close = cls._force_close
    original_del = cls.__dict__.get("__del__")

    def connect(self, *args, **kwargs):
        result = original_connect(self, *args, **kwargs)
        try:
            tracker.on_connect(self)
        except Exception:
            pass
        return result

    def close(self):
        try:
            tracker.on_close(self)
        except Exception:
            pass
        return original_close(self)

    def _force_close(self):
        try:
            tracker.on_force_close(self)
        except Exception:
            pass
        return original_force_close(self)

    cls.connect = _wrap(original_connect, connect)
    cls.close = _wrap(original_close, close)
    cls._force_close = _wrap(original_force_close, _force_close)
    if original_del is not None:
        # ``__del__ = _force_close`` in PyMySQL: bound to the original function at class
        # creation, so it needs its own wrapper (a destruction, not an error path).
        def __del__(self):
            try:
                tracker.on_del(self)
            except Exception:
                pass
            return original_del(self)

        cls.__del__ = _wrap(original_del, __del__)
    cls._trace_quit_hooked = True
    version = getattr(sys.modules.get("pymysql"), "__version__", None)
    agent.emit(agent.ev.MODULE, name="pymysql", version=version, file=getattr(module, "__file__", None),
               driver=DRIVER)


def unhook(module):
    """Restore the methods ``hook`` wrapped (for Agent.stop(): detach, the pytest plugin)."""
    cls = getattr(module, "Connection", None)
    if cls is None or not cls.__dict__.get("_trace_quit_hooked", False):
        return
    for name in ("connect", "close", "_force_close", "__del__"):
        wrapper = cls.__dict__.get(name)
        original = getattr(wrapper, "__wrapped__", None)
        if original is not None:
            setattr(cls, name, original)
    del cls._trace_quit_hooked


def note_unprobed(agent, module):
    """A MySQL driver the agent cannot see into was imported: say so (the report counts it)."""
    name = getattr(module, "__name__", "?")
    agent.emit(agent.ev.MODULE, name=name, version=getattr(module, "__version__", None),
               file=getattr(module, "__file__", None), driver=UNPROBED_DRIVERS.get(name, name), probed=False)


def hooks():
    """module name -> hook(agent, module), for the import hook."""
    out = {CONNECTION_MODULE: hook}
    for name in UNPROBED_DRIVERS:
        out[name] = note_unprobed
    return out
