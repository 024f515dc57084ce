"""The agent's mysql-connector-python hooks (docs/drivers.md).

Two connection classes, one per mode, each with ``close`` and its alias ``disconnect``:

* ``MySQLConnection`` (pure Python, ``use_pure=True``): close() writes COM_QUIT, then closes
  the socket; a connection destroyed open closes its socket without it (an aborted client).
* ``CMySQLConnection`` (the C extension ``_mysql_connector``, a libmysqlclient linked into it):
  close() calls mysql_close; so does the C handle's destructor, which therefore sends COM_QUIT
  for a connection destroyed open too. The kernel sees that COM_QUIT without knowing who sent
  it; the agent says which (``conn_destroy`` with ``quit`` True, and its cause).

Keys as for PyMySQL (tracer/agent/sockets.py): ``conn`` = the socket's inode. The C extension
shows no descriptor, so its connect compares this process's descriptors before and after
(one new socket: that one; none or several -- another thread connecting at the same moment,
a number reused within the connect -- : the connection is left to the kernel's records).
"""

from _trace_quit_agent import sockets

PURE_MODULE = "mysql.connector.connection"
CEXT_MODULE = "mysql.connector.connection_cext"
DRIVER_PURE = "mysql-connector"
DRIVER_CEXT = "mysql-connector-c"
INFO = (("host", "_host"), ("port", "_port"), ("user", "_user"), ("db", "_database"),
        ("unix_socket", "_unix_socket"))


def _tracker(agent, driver, quit_on_destroy):
    trackers = agent.socket_trackers
    tracker = trackers.get(driver)
    if tracker is None:
        tracker = trackers[driver] = sockets.SocketTracker(agent, driver, quit_on_destroy=quit_on_destroy)
    return tracker


def _hook_close(agent, cls, tracker, quit=True):
    def note(conn):
        try:
            entry = tracker.take(conn)
            if entry is not None:
                tracker.closed(entry, quit, 1)
        except Exception:
            pass

    for name in ("close", "disconnect"):
        sockets.patch_quiet(agent, cls, name, note)


def _pure_socket(conn, before):
    """(handle, inode, fd) of a pure-Python connection: its socket object's."""
    sock = getattr(getattr(conn, "_socket", None), "sock", None)
    ino, fd = sockets.socket_key(sock)
    return sock, ino, fd


def _cext_socket(conn, before):
    """(handle, inode, fd) of a C extension connection: the one socket its connect opened."""
    new = sockets.new_sockets(before)
    if len(new) != 1:
        return None, None, None   # another thread connected at the same instant: left to the kernel
    return getattr(conn, "_cmysql", None), new[0][1], new[0][0]


def _hook(agent, module, class_name, driver, quit_on_destroy, before_connect, socket_of):
    cls = getattr(module, class_name, None)
    if cls is None or cls.__dict__.get("_trace_quit_hooked", False):
        return
    tracker = _tracker(agent, driver, quit_on_destroy)

    def make(original):
        def _open_connection(self, *args, **kwargs):
            try:
                before = before_connect()
            except Exception:
                before = None
            result = original(self, *args, **kwargs)
            try:
                handle, ino, fd = socket_of(self, before)
                if ino is not None and not agent.stopped:
                    tracker.register(self, handle, ino, fd, agent.stack(1), agent.thread_name(),
                                     sockets.connect_info(self, INFO))
            except Exception:
                pass
            return result
        return _open_connection

    sockets.patch(agent, cls, "_open_connection", make)
    _hook_close(agent, cls, tracker)
    cls._trace_quit_hooked = True
    agent.restore.append((cls, "_trace_quit_hooked", agent.delete_marker, True))
    sockets.module_record(agent, "mysql.connector", driver)


def hook_pure(agent, module):
    _hook(agent, module, "MySQLConnection", DRIVER_PURE, False, lambda: None, _pure_socket)


def hook_cext(agent, module):
    _hook(agent, module, "CMySQLConnection", DRIVER_CEXT, True, sockets.open_fds, _cext_socket)


def hooks():
    return {PURE_MODULE: hook_pure, CEXT_MODULE: hook_cext}
