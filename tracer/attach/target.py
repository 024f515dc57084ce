"""What a ``--pid`` is: running or not, whose, which Python, and its process tree (from /proc)."""

import dataclasses
import os
import re
from typing import List, Optional, Tuple

from trace_quit.tracer.attach.errors import (AttachError, EX_NOT_PYTHON, EX_NOT_RUNNING, EX_NOPERM,
                                             EX_OWN_TRACER, EX_STOPPED, EX_ZOMBIE)

_LIBPYTHON = re.compile(r"/libpython(3)\.(\d+)(t?)[^/]*\.so")
_EXE_PYTHON = re.compile(r"python(3)\.(\d+)(t?)$")


@dataclasses.dataclass
class Target:
    """A running CPython process we may inject into."""

    pid: int
    uid: int
    gid: int
    exe: str
    version: Optional[Tuple[int, int]]
    free_threaded: bool
    #: It sees another file system than ours (chroot, container): paths differ, and its
    #: users may control what a path means there. No agent then (tracer/attach/inject.py).
    other_root: bool = False

    @property
    def unsupported(self) -> Optional[str]:
        """Why the agent cannot be injected (the eBPF layer still works), or None."""
        if self.free_threaded:
            return "a free-threaded build (no GIL to take, no generations)"
        if self.version is None:
            return "its Python version could not be read"
        if self.version < (3, 8):
            return "Python %d.%d (the agent needs 3.8+)" % self.version
        return None

    @property
    def label(self):
        if self.version is None:
            return "Python"
        return "Python %d.%d%s" % (self.version + ("t" if self.free_threaded else "",))


def proc_state(pid) -> Optional[str]:
    """The one-letter state of ``pid`` (R, S, D, T, Z, ...), None if there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def check(pid, as_root=None) -> Target:
    """Raise AttachError (one line, distinct exit code) unless ``pid`` is a live CPython we may trace."""
    if as_root is None:
        as_root = os.geteuid() == 0
    state = proc_state(pid)
    if state is None:
        raise AttachError("no process %d: check the pid (ps -p %d)" % (pid, pid), EX_NOT_RUNNING)
    if state in ("Z", "X"):
        raise AttachError("process %d has exited (a zombie waiting for its parent): nothing to attach to"
                          % pid, EX_ZOMBIE)
    if state in ("T", "t"):
        # Injecting would wait for a thread that cannot run, and our "never leave it stopped"
        # SIGCONT would resume a process someone stopped on purpose.
        raise AttachError("process %d is stopped (SIGSTOP, job control or a debugger): continue it first "
                          "(kill -CONT %d, or detach the debugger)" % (pid, pid), EX_STOPPED)
    if pid == os.getpid() or _is_own_tracer(pid):
        raise AttachError("process %d is trace-quit itself: give the pid of the program to trace" % pid,
                          EX_OWN_TRACER)
    st = os.stat("/proc/%d" % pid)
    if not as_root and st.st_uid != os.getuid():
        raise AttachError("process %d belongs to another user: attaching needs root, run it with sudo" % pid,
                          EX_NOPERM)
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
    except OSError as exc:
        raise AttachError("cannot inspect process %d: %s (attaching needs root: run it with sudo)"
                          % (pid, exc.strerror), EX_NOPERM) from None
    version, free_threaded = python_version(pid, exe)
    if version is None:
        raise AttachError("process %d (%s) is not a Python program: --pid traces a running CPython"
                          % (pid, os.path.basename(exe)), EX_NOT_PYTHON)
    return Target(pid=pid, uid=st.st_uid, gid=st.st_gid, exe=exe, version=version, free_threaded=free_threaded,
                  other_root=other_root(pid))


def other_root(pid):
    """Does ``pid`` live in another root directory or mount namespace than trace-quit (or cannot we tell)?"""
    try:
        theirs, ours = os.stat("/proc/%d/root" % pid), os.stat("/proc/self/root")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            return True
        return os.readlink("/proc/%d/ns/mnt" % pid) != os.readlink("/proc/self/ns/mnt")
    except OSError:
        return True


def python_version(pid, exe) -> Tuple[Optional[Tuple[int, int]], bool]:
    """(major, minor) and free-threadedness of the CPython in ``pid``; (None, False) if none.

    A shared build maps libpython3.X[t].so; a static one (Debian's) is the executable itself,
    named python3.X[t] in the file system even when started through a python3 symlink."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            maps = f.read()
    except OSError:
        maps = ""
    return version_from(maps, os.path.realpath(exe))


def version_from(maps, exe):
    """python_version() on the text of /proc/PID/maps and the executable's real path."""
    m = _LIBPYTHON.search(maps)
    if m is None:
        m = _EXE_PYTHON.search(os.path.basename(exe).replace(" (deleted)", ""))
    if m is None:
        return None, False
    return (int(m.group(1)), int(m.group(2))), m.group(3) == "t"


def _is_own_tracer(pid):
    """Is ``pid`` a trace-quit (its command line runs our CLI)?"""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(arg.endswith(b"trace-quit") or b"trace_quit.tracer.cli" in arg for arg in argv[:3])


def _ppid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid) -> List[int]:
    """Every live process below ``pid`` (gunicorn/uwsgi workers), parents before children."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        parent = _ppid(int(name))
        if parent is not None:
            children.setdefault(parent, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        for child in sorted(children.get(current, ())):
            if proc_state(child) not in (None, "Z", "X"):
                out.append(child)
                todo.append(child)
    return out


def same_python_tree(target: Target) -> List[Target]:
    """The target and every descendant running a CPython we can inject into."""
    out = [target]
    for pid in descendants(target.pid):
        try:
            child = check(pid)
        except (AttachError, OSError):
            continue
        if child.unsupported is None:
            out.append(child)
    return out

