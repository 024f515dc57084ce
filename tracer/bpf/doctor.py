"""What the eBPF layer can do on this machine, each check with its fix (``trace-quit doctor``).

    from trace_quit.tracer.bpf.doctor import checks
    for c in checks(python="/usr/bin/python3"):   # {name, ok, detail, fix}
        ...

Every check tries the real operation once (a map create, a compile, a resolve) rather
than guessing from versions. Nothing is attached and nothing is left behind.
"""

import ctypes
import os
import sys
import time

from trace_quit.tracer.bpf import perf
from trace_quit.tracer.bpf.errors import BpfUnavailable

_NR_BPF = 321  # x86-64
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_ARRAY = 2


def _check(name, ok, detail, fix="", essential=True, more=""):
    """One check; ``more`` is the technical detail `doctor --verbose` adds (offsets, instructions)."""
    c = {"name": name, "ok": bool(ok), "detail": detail, "fix": "" if ok else fix, "essential": essential}
    if more:
        c["more"] = more
    return c


NEEDS_ROOT = "needs root: run `sudo trace-quit doctor` (or trace with --no-bpf, the agent alone)"


def _tracefs_unreadable(path):
    """tracefs is there but this user may not look into it (mode 0700 root): not a kernel problem."""
    return os.geteuid() != 0 and os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK)


def _bpf_syscall():
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 30)()
    attr[0], attr[1], attr[2], attr[3] = _BPF_MAP_TYPE_ARRAY, 4, 8, 1  # type, key, value, entries
    fd = libc.syscall(_NR_BPF, _BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        return False, os.strerror(ctypes.get_errno())
    os.close(fd)
    return True, "bpf(BPF_MAP_CREATE) works"


def checks(python=None, uid=None, gid=None):
    """Run every check; ``python`` is the interpreter whose GC and mysqlclient to inspect."""
    out = []
    root = os.geteuid() == 0
    out.append(_check("root", root, "running as uid %d" % os.geteuid(),
                      "run trace-quit with sudo (the traced program still runs as you), or use --no-bpf"))
    if root:
        ok, detail = _bpf_syscall()
        fix = ("the kernel needs CONFIG_BPF_SYSCALL and kernel.unprivileged_bpf_disabled does not matter as "
               "root; check dmesg and lockdown (cat /sys/kernel/security/lockdown)")
    else:  # not a kernel question yet: the user is just not root
        ok, detail, fix = False, "not tried: needs root", NEEDS_ROOT
    out.append(_check("bpf syscall", ok, detail, fix))
    pmu = perf.uprobe_pmu_type()
    ref = perf.supports_ref_ctr()
    out.append(_check("uprobes", pmu is not None,
                      "uprobe PMU type %s; USDT semaphores by the kernel (ref_ctr_offset): %s" % (
                          pmu, "yes" if ref else "no"),
                      "the kernel needs CONFIG_UPROBE_EVENTS (uprobe PMU at %s)" % perf.UPROBE_PMU))
    tracefs = "/sys/kernel/tracing"
    have_tracefs = os.path.isdir(os.path.join(tracefs, "events"))
    syscalls = os.path.isdir(os.path.join(tracefs, "events", "syscalls", "sys_enter_sendto"))
    unreadable = _tracefs_unreadable(tracefs)
    if unreadable:
        out.append(_check("tracefs", False, "%s is not readable as uid %d: needs root" % (tracefs, os.geteuid()),
                          NEEDS_ROOT, essential=False))
    else:
        out.append(_check("tracefs", have_tracefs and syscalls,
                          "%s mounted: %s; syscall tracepoints (wire confirmation): %s" % (
                              tracefs, "yes" if have_tracefs else "no", "yes" if syscalls else "no"),
                          "mount -t tracefs nodev /sys/kernel/tracing" if not have_tracefs else
                          "the kernel needs CONFIG_FTRACE_SYSCALLS for COM_QUIT wire confirmation", essential=False))
    # The server ending a connection first: the socket's EOF/reset and the send results need
    # the syscall exit tracepoints; who closed a TCP connection first needs sock:inet_sock_set_state.
    from trace_quit.tracer.bpf.compile import TRACEPOINTS

    absent = [cat + ":" + name for cat, name, _fn, _f in TRACEPOINTS
              if not os.path.isdir(os.path.join(tracefs, "events", cat, name))]
    if unreadable:
        out.append(_check("server-end evidence", False, "tracepoints not readable: needs root", NEEDS_ROOT,
                          essential=False))
    else:
        out.append(_check("server-end evidence", have_tracefs and not absent,
                          "tracepoints for EOF/reset, send results and TCP close order: %s" % (
                              "all present" if not absent else "missing " + ", ".join(absent)),
                          "a kernel with CONFIG_FTRACE_SYSCALLS and the sock tracepoints (4.16+); without them "
                          "a server-ended connection is still seen by its dropped socket (bpf_close.sock)",
                          essential=False))
    try:
        t0 = time.monotonic()
        import bcc
        out.append(_check("bcc import", True, "bcc %s from %s (%.2f s)" % (
            getattr(bcc, "__version__", "?"), os.path.dirname(bcc.__file__), time.monotonic() - t0)))
        have_bcc = True
    except ImportError as exc:
        out.append(_check("bcc import", False, str(exc),
                          "apt-get install python3-bpfcc, and make the venv with --system-site-packages "
                          "(the PyPI package named bcc is unrelated)"))
        have_bcc = False

    # Resolve the interpreter's files: GC source, mysqlclient, client library, probe sites.
    from trace_quit.tracer.bpf.resolve import Targets, resolve_targets

    python = python or sys.executable
    targets = None
    try:
        targets = resolve_targets([python, "-c", "pass"], dict(os.environ), uid, gid)
    except BpfUnavailable as exc:
        out.append(_check("python", False, str(exc), "pass the interpreter your program runs with"))
    if targets is not None:
        gc_fix = ("use an interpreter with USDT (Debian's /usr/bin/python3) or an unstripped libpython "
                  "(pyenv builds are); the agent still reports GC causes")
        if targets.gc_mode == "usdt":
            detail = "USDT python:gc__start/gc__done in %s (semaphores set by the kernel)" % targets.libpython
        elif targets.gc_mode == "symbol":
            syms = sorted({p.symbol for p in targets.probes if p.role == "gc_start"})
            detail = "no USDT; %s in %s's .symtab (entry + uretprobe)" % (", ".join(syms), targets.libpython)
        else:
            detail = "; ".join(m["why"] for m in targets.missing if m["what"] == "gc brackets") or "none"
        # The collector, always said; a caveat (which layer it limits) on the line itself, not
        # only under --verbose: a plain "ok" would hide that generations are not read.
        caveats = [n for n in targets.notes if n.startswith("kernel layer: ")]
        more = "; ".join(n for n in targets.notes if n not in caveats)
        detail = "%s collector; %s" % (targets.gc_collector or "unknown", detail)
        if caveats:
            detail += "; caveat, " + "; ".join(caveats)
        out.append(_check("gc probes", targets.gc_mode is not None,
                          "Python %s: %s" % (".".join(map(str, targets.python_version)), detail), gc_fix,
                          essential=False, more=more))
        close = [p for p in targets.probes if p.role == "close"]
        more = ""
        if targets.client_lib and close:
            detail = "%s: mysql_close probed; %s" % (targets.client_lib, (
                "MySQLdb at %s" % targets.mysql_so) if targets.mysql_so else "MySQLdb not found for this Python")
            more = "%s: mysql_close at file offset %#x (%s)%s" % (
                targets.client_soname, close[0].offset, close[0].why,
                ", misses " + close[0].skipped if close[0].skipped else "")
            ok = True
        else:
            detail = "; ".join("%s: %s" % (m["what"], m["why"]) for m in targets.missing) or "not found"
            ok = False
        # Essential only for a Python that has mysqlclient: without it the mysqlclient check
        # (optional: PyMySQL programs) already says so.
        out.append(_check("client library", ok, detail,
                          "install mysqlclient into the environment of %s (pip install mysqlclient)" % python,
                          essential=bool(targets.mysql_so), more=more))
    if have_bcc and root:
        from trace_quit.tracer.bpf.compile import headers_info
        from trace_quit.tracer.bpf.session import BpfSession

        try:
            s = BpfSession(targets or Targets(argv=[]), lambda e: None)
            hdr = s.headers
            detail = "compiled in %.2f s against %s" % (s.describe()["timings"]["compile_s"], hdr["build"])
            more = ("headers fallback used: " + hdr["note"]) if hdr["fallback"] else ""
            s.detach()
            out.append(_check("bcc compile", True, detail, more=more))
        except BpfUnavailable as exc:
            hdr = headers_info()
            out.append(_check("bcc compile", False, str(exc),
                              "apt-get install linux-headers-amd64; ln -s /usr/src/linux-headers-<ver>-amd64 "
                              "/lib/modules/%s/build; ln -s /usr/src/linux-headers-<ver>-common "
                              "/lib/modules/%s/source" % (hdr["kernel"], hdr["kernel"])))
    elif not root:
        out.append(_check("bcc compile", False, "not tried: needs root", NEEDS_ROOT))
    else:
        out.append(_check("bcc compile", False, "not tried: bcc does not import", "fix the bcc import above first"))
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(checks(*sys.argv[1:2]), indent=1))
