"""One eBPF tracing session: the compiled probes (compile.py), attach by path, drain the ring
buffer, detach.

With compile.py, the only module that imports bcc, and only when a session is created. Usage (the CLI):

    s = BpfSession(targets, emit)   # compile now (~0.3 s)
    s.attach(root_pid)              # the corked child, before it execs
    s.poll()                        # every ~20 ms from one thread
    s.detach()                      # flush, then close every perf fd; idempotent

Events handed to ``emit`` follow tracer/events.py (``src: "bpf"``). A caller that can take
pre-encoded capture lines passes ``emit_text(text, counts, connects_ok)`` as well: ``poll``
then hands over each drained batch as one string of JSON lines (the same records ``emit``
would get, encoded as ``events.encode`` does), ``counts`` per kind and the number of
successful ``bpf_connect`` among them; ``emit`` still carries notes and ``bpf_stats``.
"""

import ctypes
import os
import threading
import time

from trace_quit.tracer import events as ev
from trace_quit.tracer.bpf import decode, perf
from trace_quit.tracer.bpf.compile import (CONFIG, RINGBUF_PAGES, TRACEPOINTS, compile_probes, headers_info,
                                           machine_defines, program_config, take_early, tracepoint_defines)
from trace_quit.tracer.bpf.errors import BpfUnavailable
from trace_quit.tracer.bpf.ringbuf import RingReader

#: Linux TCP states, as bpf_close_ret.tcp_from / tcp_to (kept here for existing importers).
TCP_STATES = decode.TCP_STATES

#: Raw tracepoints (probes/syscalls.h: every system call the programs look at, in two programs):
#: sends inside mysql_close (wire), and reads/writes on connections' sockets, connect() in
#: mysql_real_connect, close() (the server ending a connection first).
_RAW_TRACEPOINTS = [
    ("sys_enter", "on_sys_enter", ("write", "sendto", "writev", "sendmsg", "read", "recvfrom", "connect", "close")),
    ("sys_exit", "on_sys_exit", ("write", "sendto", "writev", "sendmsg", "read", "recvfrom")),
]

#: At most this much is copied out of the ring buffer per read (then released at once).
DRAIN_CHUNK = 1 << 20
STATS_EVERY_S = 1.0


def _attach_order(site):
    """Ends of brackets before their beginnings: attaching to a running program (--pid), an
    entry we see then always has its return/done seen too, so no bracket (GC, mysql_close,
    mysql_real_connect) stays open because its end probe came later (probes/cpython.h, gc brackets)."""
    return 0 if site.how == "uretprobe" or site.role == "gc_done" else 1


class BpfSession:
    """Compiled probes for one traced command; attach, poll, describe, detach."""

    def __init__(self, targets, emit, ringbuf_pages=RINGBUF_PAGES, emit_text=None):
        self.targets = targets
        self.emit = emit
        self.emit_text = emit_text
        self._reader = None
        self.drain_stats = {"batches": 0, "records": 0, "bytes": 0, "seconds": 0.0}
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
        self._tp_missing = tracepoint_defines()[1]
        self.defines = machine_defines(ringbuf_pages)
        self.config = program_config(targets)
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
        self._bpf, early_s = take_early(self.defines)
        if self._bpf is not None:
            self._timings["compile_s"] = early_s    # in the background, while resolving
            self._timings["compile_wait_s"] = round(time.monotonic() - t0, 4)
        else:
            try:
                self._bpf = compile_probes(self.defines)
            except Exception as exc:  # bcc raises bare Exception on compile/load failure
                raise BpfUnavailable("bcc could not compile the probes (%s); run trace-quit doctor for the fix, "
                                     "or use --no-bpf" % exc)
            self._timings["compile_s"] = round(time.monotonic() - t0, 4)
        self._bcc = bcc
        config = self._bpf[b"config"]
        for name, value in self.config.items():
            config[ctypes.c_int(CONFIG[name])] = ctypes.c_int64(value)

    def cflags(self):
        """The -D flags passed to the compiler (also shown by --dump-bpf)."""
        return ["-D%s=%d" % (k, v) for k, v in sorted(self.defines.items())]

    # --- attach --------------------------------------------------------------------------
    def attach(self, root_pid):
        """Trace ``root_pid`` and its descendants; attach every resolved probe by path."""
        with self._lock:
            t0 = time.monotonic()
            b = self._bpf
            words = b[b"traced"]  # one bit per tgid (probes/common.h)
            idx = ctypes.c_int(root_pid >> 6)
            words[idx] = ctypes.c_uint64(words[idx].value | (1 << (root_pid & 63)))
            self._reader = RingReader(b[b"events"].map_fd, self.defines["RINGBUF_PAGES"] * os.sysconf("SC_PAGE_SIZE"))
            self.root_pid = root_pid
            if getattr(self.targets, "nothing_to_probe", None):
                # Not one uprobe to place (resolve_targets says why): attach nothing at all, so
                # the run costs nothing, and say so in the capture (describe()["missing"]).
                self._missing.append({"what": "eBPF probes", "why": self.targets.nothing_to_probe})
                self._timings["attach_s"] = round(time.monotonic() - t0, 4)
                return
            ref_ctr_ok = perf.supports_ref_ctr()
            for site in sorted(self.targets.probes, key=_attach_order):
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
            for cat, name, fn_name, _fields in TRACEPOINTS:
                if any(m["what"] == "%s:%s" % (cat, name) for m in self._tp_missing):
                    self._missing.append({"what": "tracepoint %s:%s" % (cat, name),
                                          "why": "not available on this kernel"})
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
            for name, fn_name, calls in _RAW_TRACEPOINTS:
                try:
                    fn = b.load_func(fn_name.encode(), self._bcc.BPF.RAW_TRACEPOINT)
                    fd = perf.attach_raw_tracepoint(fn.fd, name)
                except Exception as exc:
                    self._missing.append({"what": "raw tracepoint %s" % name, "why": str(exc)})
                    continue
                self._fds.append(fd)
                # One entry per system call the program looks at, named like its trace event
                # (what a reader checks for: e.g. the send calls mean wire confirmation).
                for call in calls:
                    self._attached.append({"role": "tracepoint", "fn": fn_name, "how": "raw_tracepoint",
                                           "symbol": "syscalls:%s_%s" % (name, call), "via": "raw_syscalls:" + name})
            self._timings["attach_s"] = round(time.monotonic() - t0, 4)
            if not any(a["how"] != "tracepoint" for a in self._attached) and self.targets.probes:
                self.detach()
                raise BpfUnavailable("no uprobe could be attached (%s); run trace-quit doctor, or use --no-bpf"
                                     % "; ".join(m["why"] for m in self._missing[-3:]))

    # --- events --------------------------------------------------------------------------
    def _drain(self):
        """Copy every committed record out of the ring buffer, release it, decode, deliver."""
        reader = self._reader
        if reader is None:
            return
        t0 = time.monotonic()
        while True:
            data = reader.read(DRAIN_CHUNK)
            if not data:
                break
            reader.advance(len(data))   # a copy: the kernel may reuse the space at once
            self._deliver(data)
            self.drain_stats["batches"] += 1
            self.drain_stats["bytes"] += len(data)
            if len(data) < DRAIN_CHUNK // 2:
                break
        self.drain_stats["seconds"] += time.monotonic() - t0

    def _deliver(self, data):
        """Decode a run of ring buffer records (tracer/bpf/decode.py) and hand them to emit_text or emit."""
        done = 0
        if self.emit_text is not None:
            try:
                text, counts, connects_ok, done = decode.lines(data)
            except Exception as exc:  # a formatting bug: say so, then take the careful path
                self._decode_error(exc)
                done = 0
            else:
                self.drain_stats["records"] += done
                if text:
                    self.emit_text(text, counts, connects_ok)
        if done * decode.RECORD_SIZE < len(data):
            self._deliver_walk(data[done * decode.RECORD_SIZE:])

    def _deliver_walk(self, data):
        """The general path: walk headers one by one (records of other sizes, discarded ones)."""
        off, n = 0, len(data)
        while off + decode.RECORD_HEADER.size <= n:
            length = decode.RECORD_HEADER.unpack_from(data, off)[0]
            size = length & 0x3FFFFFFF
            step = 8 + ((size + 7) & ~7)
            if not length & (1 << 30) and size == decode.EVENT_SIZE and off + 8 + size <= n:
                self.drain_stats["records"] += 1
                try:
                    out = decode.decode(data, off + 8)
                except Exception as exc:
                    self._decode_error(exc)
                    out = None
                if out is not None:
                    try:
                        if self.emit_text is not None:
                            self.emit_text(ev.encode(out), {out["k"]: 1}, int(out["k"] == ev.BPF_CONNECT and out["ok"]))
                        else:
                            self.emit(out)
                    except Exception as exc:  # one bad record (or a failing sink) must not cost the rest
                        self._decode_error(exc)
            off += step

    def _decode_error(self, exc):
        # Never let one bad record stop the drain; say so once.
        self._decode_errors += 1
        if self._decode_errors == 1:
            self.emit({"k": ev.TRACER_NOTE, "t": ev.now_ns(), "src": ev.SRC_BPF, "level": "error",
                       "text": "could not decode a bpf event: %r" % (exc,)})

    def poll(self):
        """Drain the ring buffer now, delivering every event (and bpf_stats every ~1 s)."""
        with self._lock:
            if self._detached or self._bpf is None or self._reader is None:
                return
            self._drain()
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

    def signal_reached(self, pid, sig, since_ns):
        """Whether ``sig`` was sent to ``pid`` by another process than this one at or after
        ``since_ns`` (CLOCK_MONOTONIC): the program got it directly. False when unknown."""
        try:
            if self._bpf is None:
                return False
            seen = self._bpf[b"sigs_seen"].get(ctypes.c_uint32(pid))
            if seen is None:
                return False
            return seen.sig == sig and seen.sender != os.getpid() and seen.ts >= since_ns
        except Exception:
            return False

    # --- description ---------------------------------------------------------------------
    def describe(self):
        """What was attached and how, what is missing and why, headers, timings (capture header)."""
        return {
            "probes": list(self._attached),
            "missing": list(self._missing),
            "headers": dict(self.headers),
            "cflags": self.cflags(),
            "config": dict(self.config),
            "targets": self.targets.describe(),
            "timings": dict(self._timings),
            "ringbuf_pages": self.defines["RINGBUF_PAGES"],
            "drain": dict(self.drain_stats, seconds=round(self.drain_stats["seconds"], 4)),
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
                if self._bpf is not None:
                    self._drain()
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
                    self._drain()  # events submitted while we were closing
                    self._emit_stats(force=True)
                    self._final_stats = self._last_stats
                finally:
                    self._detached = True
                    if self._reader is not None:
                        self._reader.close()
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
