"""One eBPF tracing session: compile probes.c, attach by path, drain the ring buffer, detach.

The only module that imports bcc, and only when a session is created. Usage (the CLI):

    s = BpfSession(targets, emit)   # compile now (~0.3 s)
    s.attach(root_pid)              # the corked child, before it execs
    s.poll()                        # every ~20 ms from one thread
    s.detach()                      # flush, then close every perf fd; idempotent

Events handed to ``emit`` follow tracer/events.py (``src: "bpf"``).
"""

import ctypes
import importlib.resources
import os
import threading
import time

from trace_quit.tracer import events as ev
from trace_quit.tracer.bpf import perf
from trace_quit.tracer.bpf.errors import BpfUnavailable

# Kinds and codes shared with probes.c (#define EV_*, CAUSE_*, WIRE_*).
_KINDS = {1: ev.BPF_CONNECT, 2: ev.BPF_CLOSE, 3: ev.BPF_CLOSE_RET, 4: ev.BPF_WIRE, 5: ev.BPF_GC_START,
          6: ev.BPF_GC_DONE, 7: ev.BPF_FINALIZE, 8: ev.BPF_FORK, 9: ev.BPF_EXIT}
_CAUSES = {0: ev.UNKNOWN, 1: ev.EXPLICIT_CLOSE, 2: ev.REFCOUNT, 3: ev.GC, 4: ev.SHUTDOWN}
# WIRE_OTHER (bytes sent, none a COM_QUIT) is reported as not_sent, with "sends" > 0.
_WIRE = {0: ev.WIRE_NOT_SENT, 1: ev.WIRE_CONFIRMED, 2: ev.WIRE_ENCRYPTED, 3: ev.WIRE_NOT_SENT}

#: Tracepoints: (category, name, BPF function, {-D name: format field}, required fields).
_TRACEPOINTS = [
    ("task", "task_newtask", "on_newtask", {"TP_NEWTASK_PID": "pid", "TP_NEWTASK_FLAGS": "clone_flags"}),
    ("sched", "sched_process_exit", "on_exit", {"TP_EXIT_GROUP_DEAD": "group_dead"}),
    ("syscalls", "sys_enter_write", "on_sys_write", {"TP_WRITE_FD": "fd", "TP_WRITE_BUF": "buf", "TP_WRITE_LEN": "count"}),
    ("syscalls", "sys_enter_sendto", "on_sys_sendto", {"TP_SENDTO_FD": "fd", "TP_SENDTO_BUF": "buff", "TP_SENDTO_LEN": "len"}),
    ("syscalls", "sys_enter_writev", "on_sys_writev", {"TP_WRITEV_FD": "fd", "TP_WRITEV_VEC": "vec"}),
    ("syscalls", "sys_enter_sendmsg", "on_sys_sendmsg", {"TP_SENDMSG_FD": "fd", "TP_SENDMSG_MSG": "msg"}),
]
_OPTIONAL_FIELDS = {"TP_EXIT_GROUP_DEAD"}  # missing on older kernels: fall back to tid == tgid

#: Ring buffer pages (4 KiB each, power of two): 1 MiB holds ~16k events, i.e. far more
#: than a 20 ms drain interval sees even on the 10,000-connection churn test.
RINGBUF_PAGES = 256
STATS_EVERY_S = 1.0


def probes_source():
    """The text of probes.c, from the installed package (never from the working directory)."""
    return importlib.resources.files("trace_quit.tracer.bpf").joinpath("probes.c").read_text()


def headers_info():
    """Which kernel headers bcc will compile against, and whether that is the mismatched fallback."""
    rel = os.uname().release
    build = "/lib/modules/%s/build" % rel
    info = {"kernel": rel, "build": None, "fallback": False, "ikheaders": os.path.exists("/sys/kernel/kheaders.tar.xz")}
    if os.path.exists(build):
        target = os.path.realpath(build)
        info["build"] = target
        base = os.path.basename(target.rstrip("/"))
        if rel not in base:
            info["fallback"] = True
            info["note"] = ("compiled against %s headers on kernel %s: acceptable, the uprobe programs only use "
                            "struct pt_regs (stable on x86-64) and tracepoint offsets read at run time" % (base, rel))
    return info


def _tracepoint_defines():
    """-D flags for tracepoint field offsets, and the tracepoints that cannot be used."""
    defines, missing = {}, []
    for cat, name, fn, fields in _TRACEPOINTS:
        try:
            fmt = perf.tracepoint_fields(cat, name)
        except perf.AttachError as exc:
            fmt = {}
            missing.append({"what": "%s:%s" % (cat, name), "why": str(exc)})
        for define, field in fields.items():
            if field in fmt:
                defines[define] = fmt[field][0]
            else:
                defines[define] = -1 if define in _OPTIONAL_FIELDS else 0
    return defines, missing


def program_defines(targets, ringbuf_pages=RINGBUF_PAGES):
    """The -D parameters of probes.c for ``targets`` (no root, no bcc needed)."""
    defines = {"CONN_OFFSET": int(targets.basicsize), "RINGBUF_PAGES": int(ringbuf_pages)}
    defines.update(targets.gc_args)
    defines.update(_tracepoint_defines()[0])
    return defines


def dump_program(targets):
    """The program as bcc would compile it for ``targets``: cflags, then probes.c (for --dump-bpf)."""
    flags = " ".join("-D%s=%d" % kv for kv in sorted(program_defines(targets).items()))
    return "// cflags: %s\n%s" % (flags, probes_source())


class BpfSession:
    """Compiled probes for one traced command; attach, poll, describe, detach."""

    def __init__(self, targets, emit, ringbuf_pages=RINGBUF_PAGES):
        self.targets = targets
        self.emit = emit
        self._lock = threading.RLock()
        self._fds = []              # perf fds we own
        self._attached = []         # describe() entries
        self._missing = list(targets.missing)
        self._timings = dict(("resolve_" + k, v) for k, v in targets.timings.items())
        self._detached = False
        self._bpf = None
        self._last_stats = None
        self._last_stats_t = 0.0
        self._decode_errors = 0
        self._final_stats = None
        self.headers = headers_info()
        self._tp_missing = _tracepoint_defines()[1]
        self.defines = program_defines(targets, ringbuf_pages)
        if os.geteuid() != 0:
            raise BpfUnavailable("eBPF tracing needs root; run with sudo, or use --no-bpf")
        if not self.headers["build"] and not self.headers["ikheaders"]:
            raise BpfUnavailable(
                "no kernel headers for %s: install linux-headers-amd64 and link /lib/modules/%s/build to "
                "/usr/src/linux-headers-<version>-amd64 (trace-quit doctor shows how), or use --no-bpf"
                % (self.headers["kernel"], self.headers["kernel"]))
        t0 = time.monotonic()
        try:
            import bcc  # noqa: F401 (only here: the one place bcc is imported)
        except ImportError:
            raise BpfUnavailable("the bcc Python module is missing: apt-get install python3-bpfcc and use a venv "
                                 "made with --system-site-packages, or use --no-bpf")
        self._timings["bcc_import_s"] = round(time.monotonic() - t0, 4)
        t0 = time.monotonic()
        try:
            self._bpf = bcc.BPF(text=probes_source().encode(), cflags=self.cflags())
        except Exception as exc:  # bcc raises bare Exception on compile/load failure
            raise BpfUnavailable("bcc could not compile the probes (%s); run trace-quit doctor for the fix, "
                                 "or use --no-bpf" % exc)
        self._timings["compile_s"] = round(time.monotonic() - t0, 4)
        self._bcc = bcc

    def cflags(self):
        """The -D flags passed to the compiler (also shown by --dump-bpf)."""
        return ["-D%s=%d" % (k, v) for k, v in sorted(self.defines.items())]

    # --- attach --------------------------------------------------------------------------
    def attach(self, root_pid):
        """Trace ``root_pid`` and its descendants; attach every resolved probe by path."""
        with self._lock:
            t0 = time.monotonic()
            b = self._bpf
            b[b"traced"][ctypes.c_uint(root_pid)] = ctypes.c_ubyte(1)
            self._ring = b[b"events"]
            self._ring.open_ring_buffer(self._on_event)
            self.root_pid = root_pid
            ref_ctr_ok = perf.supports_ref_ctr()
            for site in self.targets.probes:
                entry = site.describe()
                try:
                    fn = b.load_func(site.fn.encode(), self._bcc.BPF.KPROBE)
                    ref = site.ref_ctr_offset
                    if ref and not ref_ctr_ok:
                        # Without kernel-managed semaphores the USDT site would never fire
                        # (its guard is never set): report it rather than attach a dead probe.
                        raise perf.AttachError(0, "kernel cannot manage USDT semaphores (no ref_ctr_offset)")
                    fd = perf.attach_uprobe(fn.fd, site.path, site.offset, retprobe=site.how == "uretprobe",
                                            ref_ctr_offset=ref)
                except (perf.AttachError, Exception) as exc:
                    self._missing.append({"what": "%s %s" % (site.how, site.symbol), "why": str(exc)})
                    continue
                self._fds.append(fd)
                self._attached.append(entry)
            for cat, name, fn_name, _fields in _TRACEPOINTS:
                if any(m["what"] == "%s:%s" % (cat, name) for m in self._tp_missing):
                    self._missing.append({"what": "tracepoint %s:%s" % (cat, name), "why": "not available on this kernel"})
                    continue
                try:
                    fn = b.load_func(fn_name.encode(), self._bcc.BPF.TRACEPOINT)
                    fd = perf.attach_tracepoint(fn.fd, cat, name)
                except Exception as exc:
                    self._missing.append({"what": "tracepoint %s:%s" % (cat, name), "why": str(exc)})
                    continue
                self._fds.append(fd)
                self._attached.append({"role": "tracepoint", "fn": fn_name, "symbol": "%s:%s" % (cat, name),
                                       "how": "tracepoint"})
            self._timings["attach_s"] = round(time.monotonic() - t0, 4)
            if not any(a["how"] != "tracepoint" for a in self._attached) and self.targets.probes:
                self.detach()
                raise BpfUnavailable("no uprobe could be attached (%s); run trace-quit doctor, or use --no-bpf"
                                     % "; ".join(m["why"] for m in self._missing[-3:]))

    # --- events --------------------------------------------------------------------------
    def _on_event(self, ctx, data, size):
        try:
            self._decode(data)
        except Exception as exc:  # never let one bad record stop the drain; say so once
            self._decode_errors += 1
            if self._decode_errors == 1:
                self.emit({"k": ev.TRACER_NOTE, "t": ev.now_ns(), "src": ev.SRC_BPF, "level": "error",
                           "text": "could not decode a bpf event: %r" % (exc,)})

    def _decode(self, data):
        e = self._ring.event(data)
        kind = _KINDS.get(e.kind)
        if kind is None:
            return
        out = {"k": kind, "t": e.ts, "src": ev.SRC_BPF, "pid": e.pid, "tid": e.tid}
        if e.kind == 1:
            out.update(conn=e.conn, ok=bool(e.val), t0=e.val2)
        elif e.kind == 2:
            out.update(conn=e.conn, cause=_CAUSES.get(e.cause, ev.UNKNOWN),
                       gen=e.gen if e.cause == 3 and e.gen >= 0 else None, self=e.val2)
        elif e.kind == 3:
            out.update(conn=e.conn, wire=_WIRE.get(e.wire, ev.WIRE_UNOBSERVED), sends=e.val, t0=e.val2)
        elif e.kind == 4:
            head = bytes(e.head[:e.hlen])
            out.update(conn=e.conn, len=e.val, fd=e.val2, head=head.hex(),
                       quit=e.val == 5 and head == ev.COM_QUIT_BYTES,
                       tls=len(head) >= 2 and 0x14 <= head[0] <= 0x17 and head[1] == 3)
        elif e.kind == 5:
            out.update(gen=e.val if e.val >= 0 else None)
        elif e.kind == 6:
            out.update(collected=e.val, gen=e.gen if e.gen >= 0 else None)
        elif e.kind == 8:
            out.update(child=e.val)
        self.emit(out)

    def poll(self):
        """Drain the ring buffer now, calling ``emit`` for each event (and bpf_stats every ~1 s)."""
        with self._lock:
            if self._detached or self._bpf is None or not hasattr(self, "_ring"):
                return
            self._bpf.ring_buffer_consume()
            now = time.monotonic()
            if now - self._last_stats_t >= STATS_EVERY_S:
                self._last_stats_t = now
                self._emit_stats()

    def _emit_stats(self, force=False):
        st = self.stats()
        if force or st != self._last_stats:
            self._last_stats = st
            self.emit({"k": ev.BPF_STATS, "t": ev.now_ns(), "src": ev.SRC_BPF, **st})

    def stats(self):
        """{"emitted": n, "dropped": n}: the in-kernel counters, summed over CPUs."""
        if self._final_stats is not None:
            return dict(self._final_stats)
        if self._bpf is None:
            return {"emitted": 0, "dropped": 0}
        t = self._bpf[b"counters"]
        out = {}
        for idx, name in ((0, "emitted"), (1, "dropped")):
            vals = t[ctypes.c_int(idx)]
            out[name] = int(sum(vals))
        return out

    # --- description ---------------------------------------------------------------------
    def describe(self):
        """What was attached and how, what is missing and why, headers, timings (capture header)."""
        return {
            "probes": list(self._attached),
            "missing": list(self._missing),
            "headers": dict(self.headers),
            "cflags": self.cflags(),
            "targets": self.targets.describe(),
            "timings": dict(self._timings),
            "ringbuf_pages": self.defines["RINGBUF_PAGES"],
        }

    # --- detach --------------------------------------------------------------------------
    def detach(self, wait=True):
        """Flush the ring buffer, then close every probe; safe to call again.

        Closing costs ~0.11 s per uprobe on this kernel (RCU grace periods under a global
        mutex: threads do not help, measured). ``wait=False`` flushes, then lets a detached
        grandchild close the probes (perf.close_in_background) and returns at once.
        """
        with self._lock:
            if self._detached:
                return
            t0 = time.monotonic()
            try:
                if self._bpf is not None and hasattr(self, "_ring"):
                    self._bpf.ring_buffer_consume()
            finally:
                fds, self._fds = self._fds, []
                if wait:
                    perf.close_all(fds)
                else:
                    perf.close_in_background(fds)
                self._timings["detach_s"] = round(time.monotonic() - t0, 4)
                self._timings["detach_probes"] = len(fds)
            if self._bpf is not None:
                try:
                    if hasattr(self, "_ring"):
                        self._bpf.ring_buffer_consume()  # events submitted while we were closing
                    self._emit_stats(force=True)
                    self._final_stats = self._last_stats
                finally:
                    self._detached = True
                    self._bpf.cleanup()
            self._detached = True

    def __del__(self):
        # Last resort: never leave probes behind if a caller forgot detach().
        fds = getattr(self, "_fds", None)
        if fds:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
