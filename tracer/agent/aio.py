"""The agent's hooks for the asyncio drivers aiomysql and asyncmy (docs/drivers.md).

* aiomysql: ``ensure_closed()`` writes COM_QUIT, then ``close()``; ``close()`` alone closes
  the transport without it; ``__del__`` of a connection still open calls ``close()``. asyncio
  closes the socket on the event loop's next step -- after the collection that destroyed the
  connection has ended -- so the cause is the destruction's (``conn_destroy`` when close()
  is called from ``__del__``), not the kernel's view of the later socket close
  (analysis/attribute.py). close() and ensure_closed() are hooked without a frame of ours
  (sockets.QuietHook): aiomysql's own errors at shutdown ("Event loop is closed" in
  ``__del__``) read as they would untraced.
* asyncmy: ``ensure_closed()`` / ``close()`` as aiomysql's, but no ``__del__``: a connection
  dropped open keeps its transport registered with the loop, and the socket closes when the
  transport itself is destroyed (the loop's end, the interpreter's): that destruction is the
  connection's end here.

Keys as for PyMySQL (tracer/agent/sockets.py): ``conn`` = the socket's inode.
"""

from _trace_quit_agent import sockets

AIOMYSQL_MODULE = "aiomysql.connection"
ASYNCMY_MODULE = "asyncmy.connection"
INFO = (("host", "_host"), ("port", "_port"), ("user", "_user"), ("db", "_db"), ("unix_socket", "_unix_socket"))


def _tracker(agent, driver):
    tracker = agent.socket_trackers.get(driver)
    if tracker is None:
        tracker = agent.socket_trackers[driver] = sockets.SocketTracker(agent, driver)
    return tracker


def _transport_socket(transport):
    try:
        return transport.get_extra_info("socket")
    except Exception:
        return None


def _hook(agent, cls, driver, handle_of, connect_name, destructor):
    """Hook one driver's Connection: ``handle_of(conn)`` is its transport (or stream writer)."""
    if cls.__dict__.get("_trace_quit_hooked", False):
        return
    tracker = _tracker(agent, driver)
    getframe = agent.getframe

    def make_connect(original):
        async def connect(self, *args, **kwargs):
            result = await original(self, *args, **kwargs)
            try:
                handle = handle_of(self)
                transport = getattr(handle, "transport", handle)
                ino, fd = sockets.socket_key(_transport_socket(transport))
                if ino is not None and not agent.stopped and tracker.conn_of(self) != ino:
                    tracker.register(self, handle, ino, fd, agent.stack(1), agent.thread_name(),
                                     sockets.connect_info(self, INFO),
                                     watch=False if destructor else transport)
            except Exception:
                pass
            return result
        return connect

    def note_ensure_closed(conn):
        try:
            handle = handle_of(conn)
            entry = tracker.take(conn, handle) if handle is not None else None
            if entry is not None:
                transport = getattr(handle, "transport", handle)
                tracker.closed(entry, not transport.is_closing(), 1)
        except Exception:
            pass

    def note_close(conn):
        # aiomysql's __del__ calls close(): that is the connection's destruction (its cause is
        # the collection or refcount drop running __del__), not a close() of the program's.
        try:
            handle = handle_of(conn)
            entry = tracker.take(conn, handle) if handle is not None else None
            if entry is not None:
                if destructor and getframe(1).f_code.co_name == "__del__":
                    tracker.destroyed(entry)
                else:
                    tracker.closed(entry, False, 1)   # close() alone writes no COM_QUIT
        except Exception:
            pass

    sockets.patch(agent, cls, connect_name, make_connect)
    sockets.patch_quiet(agent, cls, "ensure_closed", note_ensure_closed)
    sockets.patch_quiet(agent, cls, "close", note_close)
    cls._trace_quit_hooked = True
    agent.restore.append((cls, "_trace_quit_hooked", agent.delete_marker, True))


def hook_aiomysql(agent, module):
    cls = getattr(module, "Connection", None)
    if cls is not None:
        _hook(agent, cls, "aiomysql", lambda conn: getattr(conn, "_writer", None), "_connect", True)
        sockets.module_record(agent, "aiomysql", "aiomysql")


def hook_asyncmy(agent, module):
    cls = getattr(module, "Connection", None)
    if cls is not None:
        # Its transport (0.2.18); its stream writer in older releases (0.2.10, the last for 3.8).
        _hook(agent, cls, "asyncmy", lambda conn: getattr(conn, "_transport", None) or getattr(conn, "_writer", None),
              "connect", False)
        sockets.module_record(agent, "asyncmy", "asyncmy")


def hooks():
    return {AIOMYSQL_MODULE: hook_aiomysql, ASYNCMY_MODULE: hook_asyncmy}
