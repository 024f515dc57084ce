"""Attaching BPF programs through perf_event_open file descriptors only.

We do not use bcc's ``attach_uprobe``: its Python wrapper cannot pass a USDT semaphore
(``ref_ctr_offset``; libbcc's C function takes it as a 7th argument the wrapper does not
declare), and libbcc falls back to creating tracefs ``uprobe_events`` entries when the
perf PMU path fails, which outlive a SIGKILLed tracer (tests/system/test_faults.py checks none
are left). Here every probe is one ``perf_event_open`` fd on the ``uprobe`` PMU (or a
tracepoint id): the kernel removes it when the fd is closed, including when the tracer dies,
and nothing is written to tracefs.

USDT semaphores: the traced program execs *after* we attach, so there is no process whose
memory bcc could poke. With ``ref_ctr_offset`` (kernel >= 4.20, format
``/sys/bus/event_source/devices/uprobe/format/ref_ctr_offset``) the kernel itself
increments the semaphore in every process that maps the file, now and at later mmaps, and
decrements it when the probe goes away: nothing is left incremented after a SIGKILL.
"""

import ctypes
import os
import struct
import threading

PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
_NR_PERF_EVENT_OPEN = 298  # x86-64
_ATTR_SIZE = 128            # PERF_ATTR_SIZE_VER7-compatible; zero tail is accepted

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.restype = ctypes.c_int

UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"


class AttachError(OSError):
    """perf_event_open or the BPF ioctl failed."""


def _pmu_field(name):
    """(shift, is_present) of a uprobe PMU format field (``config:32-63`` -> 32)."""
    try:
        with open(os.path.join(UPROBE_PMU, "format", name)) as f:
            spec = f.read().strip()
    except OSError:
        return None
    rng = spec.split(":", 1)[1]
    return int(rng.split("-")[0])


def uprobe_pmu_type():
    """The dynamic PMU type number of uprobes, or None when the kernel lacks the uprobe PMU."""
    try:
        with open(os.path.join(UPROBE_PMU, "type")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def supports_ref_ctr():
    """Whether the uprobe PMU accepts a USDT semaphore offset."""
    return _pmu_field("ref_ctr_offset") is not None


def _perf_event_open(attr, pid=-1, cpu=0):
    buf = ctypes.create_string_buffer(bytes(attr), _ATTR_SIZE)
    fd = _libc.syscall(_NR_PERF_EVENT_OPEN, buf, ctypes.c_int(pid), ctypes.c_int(cpu), ctypes.c_int(-1),
                       ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise AttachError(err, os.strerror(err))
    return fd


def _set_bpf(fd, prog_fd):
    for req, arg in ((PERF_EVENT_IOC_SET_BPF, prog_fd), (PERF_EVENT_IOC_ENABLE, 0)):
        if _libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(req), ctypes.c_int(arg)) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise AttachError(err, os.strerror(err))


def attach_uprobe(prog_fd, path, offset, retprobe=False, ref_ctr_offset=0):
    """Attach ``prog_fd`` to ``path``+``offset`` (file offset) for every process; returns the perf fd."""
    pmu = uprobe_pmu_type()
    if pmu is None:
        raise AttachError(0, "the kernel has no uprobe PMU (%s)" % UPROBE_PMU)
    config = 0
    if retprobe:
        config |= 1 << (_pmu_field("retprobe") or 0)
    if ref_ctr_offset:
        shift = _pmu_field("ref_ctr_offset")
        if shift is None:
            raise AttachError(0, "this kernel's uprobe PMU has no ref_ctr_offset (USDT semaphores)")
        config |= ref_ctr_offset << shift
    cpath = ctypes.create_string_buffer(os.fsencode(path))
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQ", attr, 0, pmu, _ATTR_SIZE, config)
    struct.pack_into("<QQ", attr, 56, ctypes.addressof(cpath), offset)  # config1 = path, config2 = offset
    fd = _perf_event_open(attr)
    _set_bpf(fd, prog_fd)
    return fd


def tracepoint_id(category, name, tracefs="/sys/kernel/tracing"):
    """The numeric id of tracepoint ``category:name``."""
    for root in (tracefs, "/sys/kernel/debug/tracing"):
        try:
            with open(os.path.join(root, "events", category, name, "id")) as f:
                return int(f.read())
        except OSError:
            continue
    raise AttachError(0, "tracepoint %s:%s not found under %s" % (category, name, tracefs))


def tracepoint_fields(category, name, tracefs="/sys/kernel/tracing"):
    """{field name: (offset, size)} from the tracepoint's format file."""
    out = {}
    for root in (tracefs, "/sys/kernel/debug/tracing"):
        try:
            with open(os.path.join(root, "events", category, name, "format")) as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith("field:"):
                continue
            parts = dict(p.strip().split(":", 1) for p in line.split(";") if ":" in p)
            decl = parts["field"].strip()
            fname = decl.split()[-1].split("[")[0].lstrip("*")
            out[fname] = (int(parts["offset"]), int(parts["size"]))
        return out
    raise AttachError(0, "tracepoint format %s:%s not readable" % (category, name))


def attach_tracepoint(prog_fd, category, name):
    """Attach ``prog_fd`` to a tracepoint through a perf fd; returns the fd."""
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQ", attr, 0, PERF_TYPE_TRACEPOINT, _ATTR_SIZE, tracepoint_id(category, name))
    fd = _perf_event_open(attr)
    _set_bpf(fd, prog_fd)
    return fd


_NR_BPF = 321               # x86-64
BPF_RAW_TRACEPOINT_OPEN = 17


def attach_raw_tracepoint(prog_fd, name):
    """Attach a BPF_PROG_TYPE_RAW_TRACEPOINT program to raw tracepoint ``name``; returns the link fd.

    The attachment lives as long as the fd (closed, or the tracer dies: gone), like a perf fd.
    """
    cname = ctypes.create_string_buffer(name.encode() if isinstance(name, str) else name)
    attr = bytearray(16)  # union bpf_attr.raw_tracepoint: __u64 name; __u32 prog_fd; (zero tail)
    struct.pack_into("<QI", attr, 0, ctypes.addressof(cname), prog_fd)
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    fd = _libc.syscall(_NR_BPF, ctypes.c_int(BPF_RAW_TRACEPOINT_OPEN), buf, ctypes.c_uint(len(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise AttachError(err, "raw tracepoint %s: %s" % (name, os.strerror(err)))
    return fd


def close_all(fds, threads=None):
    """Close perf fds, in parallel: each close waits for an RCU grace period (~0.1 s here)."""
    fds = list(fds)
    if not fds:
        return
    threads = threads or min(len(fds), 16)
    chunks = [fds[i::threads] for i in range(threads)]

    def work(chunk):
        for fd in chunk:
            try:
                os.close(fd)
            except OSError:
                pass

    if threads == 1:
        work(fds)
        return
    ts = [threading.Thread(target=work, args=(c,), name="trace-quit-detach") for c in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def close_in_background(fds, workers=4):
    """Hand the last references of ``fds`` to detached grandchildren that close them; return at once.

    Closing a probe's perf fd waits for RCU grace periods (~0.1 s per uprobe, ~0.065 s per
    tracepoint here), and one process's closes run one after another. Only the *last* close
    of an fd pays, so each of ``workers`` grandchildren keeps a share of the fds (dropping
    its copies of the others at once, which is free while we still hold them), waits on a
    pipe until our copies are closed, then closes its share: the shares go away in parallel
    (24 probes: ~1.9 s serially, under a second in 4 shares). The probes are gone when the
    last grandchild exits, or at once if they are killed: the kernel drops them with the fds
    either way. They keep no other fd (no pipe or file held).
    """
    fds = list(fds)
    if not fds:
        return
    workers = max(1, min(workers, len(fds)))
    shares = [fds[i::workers] for i in range(workers)]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only os.* calls between fork and _exit (the parent has threads)
        try:
            for share in shares:
                if os.fork() == 0:
                    try:
                        os.setsid()
                        keep = set(share) | {r}
                        for name in os.listdir("/proc/self/fd"):
                            fd = int(name)
                            if fd not in keep:
                                try:
                                    os.close(fd)
                                except OSError:
                                    pass
                        while os.read(r, 1):  # EOF: the tracer closed its copies (or died)
                            pass
                        for fd in share:
                            try:
                                os.close(fd)
                            except OSError:
                                pass
                    finally:
                        os._exit(0)
        finally:
            os._exit(0)
    os.close(r)
    os.waitpid(pid, 0)
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    os.close(w)
