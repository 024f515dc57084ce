"""A running process as ``--pid`` finds it: its command line, and what the eBPF layer probes in it
(its own executable, environment, directory and user, read from /proc)."""

import os
import shutil

from trace_quit.tracer.attach.target import other_root
from trace_quit.tracer.errors import EX_NOPERM, EX_UNAVAILABLE, TraceQuitError


def proc_cmdline(pid):
    """The command line of ``pid`` (OSError when there is no such process)."""
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]


def resolve_running_targets(pid, cmdline):
    """Resolve probes for a running process: its own executable, environment, cwd and user."""
    try:
        from trace_quit.tracer import bpf
    except ImportError as exc:
        raise TraceQuitError("the eBPF layer cannot load (%s): run scripts/setup.sh" % exc, EX_UNAVAILABLE) from None
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
        cwd = os.readlink("/proc/%d/cwd" % pid)
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = dict(item.decode("utf-8", "replace").split("=", 1)
                       for item in f.read().split(b"\0") if b"=" in item)
    except OSError as exc:
        raise TraceQuitError("cannot inspect process %d: %s" % (pid, exc.strerror), EX_NOPERM) from None
    # The path it was started by, when that is the same binary: a venv's python is a symlink
    # whose location (not the binary's) decides sys.prefix, hence where MySQLdb is found.
    from trace_quit.tracer.bpf.running import resolve_running

    elsewhere = other_root(pid)
    invoked = None if elsewhere else _invoked_path(cmdline[0] if cmdline else "", env, cwd)
    if invoked and os.path.realpath(invoked) == os.path.realpath(exe):
        exe = invoked
    try:
        # Read from its maps and files, never by running its interpreter (it could be anything
        # its user wrote, or a chroot's): tracer/bpf/running.py.
        return resolve_running(pid, [exe] + cmdline[1:], env, cwd, exe, elsewhere)
    except bpf.BpfUnavailable as exc:
        raise TraceQuitError(str(exc), EX_UNAVAILABLE) from None
    except (OSError, _elf_error()) as exc:
        raise TraceQuitError("cannot read the files of process %d: %s"
                             % (pid, getattr(exc, "strerror", None) or exc), EX_UNAVAILABLE) from None


def _elf_error():
    """The ELF reader's error, imported late like the eBPF layer itself."""
    from trace_quit.tracer.bpf.elf import ElfError

    return ElfError


def _invoked_path(arg0, env, cwd):
    """The file ``arg0`` names, as the process's own PATH and directory resolve it."""
    if not arg0:
        return None
    if os.sep in arg0:
        return os.path.normpath(os.path.join(cwd, arg0))
    return shutil.which(arg0, path=env.get("PATH", os.defpath))
