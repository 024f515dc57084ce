"""Connections keyed by their socket, for the drivers that do not go through mysqlclient.

mysql-connector-python (pure and C extension), aiomysql and asyncmy (tracer/agent/connector.py,
tracer/agent/aio.py) speak of a connection the way PyMySQL's hooks do: ``conn`` is the inode
of its socket and ``fd`` its descriptor, which the kernel's socket-level probes read from the
same fd (probes.c's msock block), so both layers name one connection. docs/drivers.md says
what each driver does at close and destruction.

Same rules as runtime.py: stdlib only, no prints, never raise into user code; what a hook
needs is bound at hook time (finalisation destroys connections too).
"""

import os
import sys


def socket_key(sock):
    """``(inode, fd)`` of a socket-like object with ``fileno()``, or ``(None, None)``."""
    try:
        fd = sock.fileno()
        if fd is None or fd < 0:
            return None, None
        return os.fstat(fd).st_ino, fd
    except Exception:
        return None, None


def open_fds(listdir=os.listdir, open_=os.open, close=os.close,
             flags=os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)):
    """The names of this process's open descriptors (a set), or None when /proc is unreadable.
    Not the listing's own descriptor: it is the lowest free one, the next socket's number."""
    try:
        fd = open_("/proc/self/fd", flags)
    except OSError:
        return None
    try:
        names = set(listdir(fd))
        names.discard(str(fd))
        return names
    except OSError:
        return None
    finally:
        close(fd)


def new_sockets(before, readlink=os.readlink):
    """[(fd, inode)] of the sockets opened since ``open_fds()`` gave ``before``: for a C client
    that shows no descriptor. Only the new names are read (a listing, not a readlink per fd:
    a service with thousands of descriptors pays for one)."""
    out = []
    after = open_fds() if before is not None else None
    if after is None:
        return out
    for name in after - before:
        try:
            link = readlink("/proc/self/fd/" + name)
            if link.startswith("socket:["):
                out.append((int(name), int(link[8:-1])))
        except (OSError, ValueError):
            continue
    return out


class SocketTracker:
    """The live connections of one driver: ``id(conn)`` -> (id(handle), inode, fd, weakref).

    ``handle`` is what tells this connection's socket from a later one of the same object
    (its socket object, its stream writer, its C handle): a close that finds another handle
    is a reconnect's, not ours. Only its id is kept: a reference would keep an asyncmy
    transport (and its socket) alive past its connection (tests/system/test_bpf_drivers.py).
    ``quit_on_destroy``: the driver sends COM_QUIT when the object is destroyed open
    (mysql-connector's C extension), which the records say."""

    def __init__(self, agent, driver, quit_on_destroy=False):
        self.agent = agent
        self.driver = driver
        self.quit_on_destroy = quit_on_destroy
        self.live = {}
        self.weakref = agent.weakref

    def conn_of(self, obj):
        entry = self.live.get(id(obj))
        return entry[1] if entry is not None else None

    def register(self, obj, handle, ino, fd, stack, thread, info, watch=None):
        """Track ``obj``'s connection and say ``conn_open``. ``watch``: the object whose
        destruction ends the connection (default ``obj``); None from ``watch=False``: none."""
        agent = self.agent
        key = id(obj)
        ref = None
        target = obj if watch is None else watch
        if target is not False:
            try:
                ref = self.weakref(target, self._destroyed(key))
            except TypeError:
                ref = None
        self.live[key] = (id(handle), ino, fd, ref)
        agent.emit(agent.ev.CONN_OPEN, conn=ino, driver=self.driver, fd=fd, obj=key, stack=stack,
                   thread=thread, **info)

    def take(self, obj, handle=None):
        """Stop tracking ``obj``; its entry when ``handle`` (if given) is still the one open."""
        entry = self.live.get(id(obj))
        if entry is None or (handle is not None and entry[0] != id(handle)):
            return None
        del self.live[id(obj)]
        return entry

    def closed(self, entry, quit, skip):
        agent = self.agent
        agent.emit(agent.ev.CONN_CLOSE, conn=entry[1], driver=self.driver, fd=entry[2], quit=quit,
                   stack=agent.stack(skip + 1), thread=agent.thread_name())

    def destroyed(self, entry):
        agent = self.agent
        cause, gen, cid = agent.classify()
        agent.emit(agent.ev.CONN_DESTROY, conn=entry[1], driver=self.driver, fd=entry[2],
                   quit=self.quit_on_destroy, cause=cause, gen=gen, cid=cid)

    def _destroyed(self, key):
        def callback(ref, tracker=self, key=key):
            # A weakref callback: within the collection that found the object garbage, or at
            # its deallocation (a refcount drop, finalisation) -- before the driver's own
            # teardown sends anything (tests/system/test_bpf_drivers.py pins each cause).
            try:
                entry = tracker.live.get(key)
                if entry is None or entry[3] is not ref or tracker.agent.stopped:
                    return
                del tracker.live[key]
                tracker.destroyed(entry)
            except Exception:
                pass
        return callback


def wrap(original, wrapper):
    """``wrapper`` dressed as ``original`` (name, doc, ``__wrapped__`` for unhooking)."""
    wrapper.__name__ = getattr(original, "__name__", "?")
    wrapper.__qualname__ = getattr(original, "__qualname__", wrapper.__name__)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    wrapper.__wrapped__ = original
    return wrapper


def patch(agent, cls, name, make):
    """Replace ``cls``'s own ``name`` with ``make(original)``; Agent.stop() restores it.
    False when ``cls`` defines no ``name`` of its own (nothing to wrap here)."""
    original = cls.__dict__.get(name)
    if original is None:
        return False
    wrapper = wrap(original, make(original))
    setattr(cls, name, wrapper)
    agent.restore.append((cls, name, original, wrapper))
    return True


class QuietHook:
    """A method that tells the agent first (``note(obj)``, returning None), then runs the
    original, through C callables only: an exception from the original reaches the program
    with no frame of ours in its traceback (as mysqldb.CloseHook does for mysqlclient;
    tests/system/test_fastapi_async_engine.py: aiomysql's errors in __del__ at shutdown). The
    original's result is returned when truthy, else None: for close()-like methods (None) and
    coroutine functions (a coroutine object)."""

    def __init__(self, agent, original, note):
        self.agent = agent
        self.original = original
        self.note = note
        self.__doc__ = getattr(original, "__doc__", None)
        self.__wrapped__ = original

    def __get__(self, obj, owner=None):
        original = self.original
        if obj is None:
            return original
        bound = original.__get__(obj, owner)
        agent = self.agent
        if agent.stopped:
            return bound
        partial = agent.partial
        return partial(next, filter(None, map(agent.call, (partial(self.note, obj), bound))), None)


def patch_quiet(agent, cls, name, note):
    """``cls.name`` as a QuietHook calling ``note(conn)`` first; restored by Agent.stop()."""
    original = cls.__dict__.get(name)
    if original is None:
        return False
    hook = QuietHook(agent, original, note)
    setattr(cls, name, hook)
    agent.restore.append((cls, name, original, hook))
    return True


def connect_info(obj, pairs):
    """Where a connection goes (never its password): attributes named in ``pairs``."""
    info = {}
    for key, attr in pairs:
        value = getattr(obj, attr, None)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if value is not None and value != "":
            info[key] = value if isinstance(value, (int, str)) else str(value)
    if info.get("unix_socket"):
        info.pop("port", None)
    return info


def module_record(agent, name, driver):
    module = sys.modules.get(name)
    agent.emit(agent.ev.MODULE, name=name, version=getattr(module, "__version__", None),
               file=getattr(module, "__file__", None), driver=driver)
