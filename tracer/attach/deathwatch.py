"""Which signal ended a process we did not start: a private tracefs instance of signal_generate.

trace-quit is not the target's parent, so its exit status is not ours to collect. The kernel's
``signal:signal_generate`` tracepoint, in a ftrace instance of our own (root-owned, under
tracefs, a few KiB of buffer), filtered on the target's threads, tells which signal it got
last: "died of SIGSEGV" rather than "exited" (tests/system/test_attach.py, the crashing
bootstrap). Best effort: without tracefs the signal is "unknown".
"""

import os
import re
import signal
import threading

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
#: Signals whose default action ends the process with a core dump or at once.
FATAL = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGKILL,
         signal.SIGTRAP, signal.SIGSYS}
MAX_READ = 1 << 16
_LINE = re.compile(r"signal_generate: sig=(\d+) errno=-?\d+ code=-?\d+ comm=.* pid=(\d+) grp=")
_lock = threading.Lock()
_watches = {}


def _tracefs():
    for root in TRACEFS:
        if os.path.isdir(os.path.join(root, "instances")):
            return root
    return None


class DeathWatch:
    """Records the signals generated for ``pid``'s threads while it lives."""

    def __init__(self, pid):
        self.pid = pid
        self.dir = None
        root = _tracefs()
        if root is None:
            return
        path = os.path.join(root, "instances", "trace-quit-%d-%d" % (os.getpid(), pid))
        try:
            os.mkdir(path)  # the kernel creates the instance; it is root's and lives in tracefs
            self.dir = path
            self._write("buffer_size_kb", "16")
            self.refresh()
            self._write("events/signal/signal_generate/enable", "1")
        except OSError:
            self.close()

    def _write(self, name, value):
        fd = os.open(os.path.join(self.dir, name), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def refresh(self):
        """Filter on the threads the process has now (a filter has no thread-group field)."""
        if self.dir is None:
            return
        try:
            tids = sorted(int(t) for t in os.listdir("/proc/%d/task" % self.pid))[:200]
        except OSError:
            return
        if tids:
            self._write("events/signal/signal_generate/filter", " || ".join("pid == %d" % t for t in tids))

    def last_signal(self):
        """The name of the last signal generated for the process ("SIGSEGV"), None if none seen."""
        if self.dir is None:
            return None
        try:
            fd = os.open(os.path.join(self.dir, "trace"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                data = os.read(fd, MAX_READ)
            finally:
                os.close(fd)
        except OSError:
            return None
        found = None
        for line in data.decode("ascii", "replace").splitlines():
            m = _LINE.search(line)
            if m:
                found = int(m.group(1))
        if found is None:
            return None
        try:
            return signal.Signals(found).name
        except ValueError:
            return "signal %d" % found

    def close(self):
        if self.dir is None:
            return
        try:
            self._write("events/signal/signal_generate/enable", "0")
        except OSError:
            pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass
        self.dir = None


def watch(pid):
    with _lock:
        if pid not in _watches:
            _watches[pid] = DeathWatch(pid)
        return _watches[pid]


def unwatch(pid):
    with _lock:
        w = _watches.pop(pid, None)
    if w is not None:
        w.close()


def fatal_signal(pid):
    """The number of the fatal-by-default signal the process got last, None if none was seen."""
    with _lock:
        w = _watches.get(pid)
    name = w.last_signal() if w is not None else None
    try:
        sig = signal.Signals[name] if name else None
    except KeyError:
        return None
    return int(sig) if sig in FATAL else None


def how_it_died(pid):
    """"died of SIGSEGV", or "ended" (with the last signal when one was seen but is not fatal by default)."""
    with _lock:
        w = _watches.get(pid)
    name = w.last_signal() if w is not None else None
    if name is None:
        return "ended"
    try:
        fatal = signal.Signals[name] in FATAL
    except KeyError:
        fatal = False
    return "died of %s" % name if fatal else "ended (last signal received: %s)" % name
