"""The agent's mysqlclient (``MySQLdb``) hooks: a connection's open, failed connect and close.

``Connection.__init__`` is wrapped (``conn_open`` with the connect parameters, never the
password, and the program's stack; ``conn_fail``); ``close`` is a ``CloseHook`` that adds
no frame to the program's tracebacks (``conn_close``); a weak reference per open
connection says ``conn_destroy`` and why (tracer/agent/collector.py) when it dies unclosed.
A connection's ``conn`` is its ``MYSQL*``, which the kernel layer reads from ``mysql_close``'s
argument: the first field after the Python object's header.

Loaded by runtime.py; its hooks run when the program imports ``MySQLdb.connections``
(tracer/agent/imports.py). ``MySQLdbConnections`` is a part of the ``Agent``.
"""

from _trace_quit_agent import sockets
from _trace_quit_agent.imports import report_module

CONNECTION_MODULE = "MySQLdb.connections"


class MySQLdbConnections:
    """The agent's side of mysqlclient's connections: those open, and their records."""

    PARAMS_CACHE_MAX = 256

    # The records of the connection path (one or two per connection) are written as text at
    # once, but for the stack: building a dict and JSON-encoding it per record was most of
    # the agent's cost per connection (tests/bench/agent_path.py). The reader validates them
    # like every other record (tracer/events.py; tests/integration/test_agent.py).
    # (The %s after "t" is ``_who()``'s fragment: src, pid, tid and thread.)
    OPEN_LINE = '{"k":"conn_open","t":%d%s,"conn":%d%s,"stack":'
    CLOSE_LINE = '{"k":"conn_close","t":%d%s,"conn":%d,"stack":'

    def _init_mysqldb(self):
        self.connections = {}    # MYSQL* -> weakref of a connection believed open
        self.params_cache = {}   # (args, kwargs keys, kwargs values) of connect() -> its fields as JSON
        self.connect_params = _connect_params
        self.conn_offset = object.__basicsize__  # MYSQL is the first field after PyObject_HEAD

    def on_conn_open(self, conn, args, kwargs):
        addr = id(conn) + self.conn_offset
        ref = self.weakref(conn, self._destroyed_callback(self.connections, addr, self.ev.CONN_DESTROY, "conn"))
        self.connections[addr] = ref
        # Connect parameters repeat (a pool, a loop): derived, and encoded, once per distinct set.
        try:
            # Flat tuples: equal keys compare element by element, mostly by identity.
            key = (args, tuple(kwargs), tuple(kwargs.values()))
            info_json = self.params_cache.get(key)
        except TypeError:
            key = info_json = None  # an unhashable argument: derive it every time
        if info_json is None:
            info = self.connect_params(args, kwargs)
            info_json = self.dumps(info)[1:-1]
            info_json = "," + info_json if info_json else ""
            if key is not None:
                if len(self.params_cache) >= self.PARAMS_CACHE_MAX:
                    self.params_cache.clear()
                self.params_cache[key] = info_json
        t = self.now()
        self._push_text(self.OPEN_LINE % (t, self._who()[0], addr, info_json), self.stack(2), t)

    def on_conn_fail(self, conn, exc):
        self.emit(self.ev.CONN_FAIL, conn=id(conn) + self.conn_offset, error=type(exc).__name__)

    def on_conn_close(self, conn):
        """Called by close() (``CloseHook``) with the program's frame right above this one."""
        try:
            addr = id(conn) + self.conn_offset
            ref = self.connections.pop(addr, None)
            if ref is not None and ref() is conn:
                t = self.now()
                self._push_text(self.CLOSE_LINE % (t, self._who()[0], addr), self.stack(1), t)
        except Exception:
            pass
        # None: the close chain goes on to the real close (see CloseHook)


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


class CloseHook:
    """``Connection.close`` that tells the agent first, and adds no frame to a traceback.

    A Python wrapper around the C ``close()`` would be on the stack when close raises (a
    second close: ProgrammingError), so programs that print the traceback (SQLAlchemy logs
    one) would show a frame of ours. Instead, looking the attribute up (Python, finished by
    the time the call happens) returns a chain of C callables: ``next(filter(None,
    map(call, (note_close, bound_close))), None)``. Calling it runs ``agent.on_conn_close``
    (which returns None, so the filter moves on), then the real close, from C: an exception
    from close() reaches the caller through no Python frame. Pinned by
    tests/integration/test_agent.py::test_close_adds_no_frame_to_the_programs_traceback."""

    def __init__(self, agent, original):
        self.agent = agent
        self.original = original
        self.__doc__ = getattr(original, "__doc__", None)

    def __get__(self, conn, owner=None):
        original = self.original
        if conn is None:
            return original  # Connection.close itself: the C method (class-level calls go unseen)
        agent = self.agent
        bound = original.__get__(conn, owner)
        if agent.stopped:
            return bound
        partial = agent.partial
        return partial(next, filter(None, map(agent.call, (partial(agent.on_conn_close, conn), bound))), None)


def hook(agent, module):
    """Wrap MySQLdb.connections.Connection's __init__ and close (it has no Python close)."""
    cls = getattr(module, "Connection", None)
    if cls is None or getattr(cls, "_trace_quit_hooked", False):
        return
    original_init = cls.__dict__.get("__init__", cls.__init__)
    original_close = cls.__dict__.get("close")
    if original_close is None:
        original_close = getattr(cls, "close")
        had_close = False
    else:
        had_close = True

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
            if not agent.stopped:
                agent.on_conn_open(self, args, kwargs)
        except Exception:
            pass

    sockets.wrap(original_init, __init__)
    # C close() lives on the base class (_mysql.connection): its method descriptor binds as usual.
    close = CloseHook(agent, original_close)
    cls.__init__ = __init__
    cls.close = close
    cls._trace_quit_hooked = True
    agent.restore.append((cls, "__init__", original_init, __init__))
    agent.restore.append((cls, "close", original_close if had_close else agent.delete_marker, close))
    agent.restore.append((cls, "_trace_quit_hooked", agent.delete_marker, True))
    report_module(agent, "MySQLdb")


def hooks():
    """module name -> hook(agent, module), for the import hook."""
    return {CONNECTION_MODULE: hook}
