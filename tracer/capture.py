"""The capture file writer: header, streamed events, trailer (format in docs/capture-format.md).

Line-oriented JSON, append-only. Events are buffered and flushed at least every
``FLUSH_INTERVAL_S`` so a SIGKILLed tracer leaves a file readable up to its last flush.
The file is created 0600, never through a symlink, never over an existing file unless
``force``, and handed to the invoking (sudo) user.

A capture may be bounded (``max_bytes``, ``trace-quit --max-capture``): once the bytes queued
reach the bound, per-event detail stops and the writer counts instead, into the trailer's
``bound``: the events not written per kind, and the connection ends after the bound per cause
(the kernel's close records, and the agent's conn_close/conn_destroy). Tracer notes and the
trailer are always written; the sampled kinds (server_count, bpf_stats, gc_counts) go on at
one record per ``BOUND_SAMPLE_EVERY_NS`` (per process), the last one at close, so the
report's timeline and totals still cover the whole run.
"""

import collections
import json
import os
import platform
import threading

from trace_quit.tracer import events as ev
from trace_quit.tracer.errors import OutputExistsError
from trace_quit.tracer.files import open_private  # noqa: F401  (re-exported: the capture's opener)

FLUSH_INTERVAL_S = 0.1

#: ``--max-capture``'s default bound (1 GiB); 0 is unbounded.
DEFAULT_MAX_BYTES = 1 << 30
#: After the bound, at most one record of a sampled kind (per key) in this many ns.
BOUND_SAMPLE_EVERY_NS = 10 * 10**9
#: Written whatever the bound: the tracer's own account of the run (a handful per run).
ALWAYS_WRITTEN = frozenset((ev.TRACER_NOTE, ev.CHILD_START, ev.CHILD_EXIT, ev.SERVER_STATUS, ev.BPF_PROBES,
                            ev.AGENT_LOST))
#: Sampled or cumulative kinds: after the bound, downsampled per key (None: one key; "pid": per process).
SAMPLED = {ev.SERVER_COUNT: None, ev.BPF_STATS: None, ev.GC_COUNTS: "pid"}
#: Kernel lines read after the bound: connects (opened), closes (cause), close returns (wire).
_COUNTED_KERNEL_KINDS = (ev.BPF_CLOSE, ev.BPF_CLOSE_RET, ev.BPF_SOCK_CLOSE, ev.BPF_CONNECT, ev.BPF_SOCK_CONNECT,
                         ev.BPF_WIRE)
_CLOSE_LINE_PREFIXES = tuple('{"k":"%s"' % k for k in _COUNTED_KERNEL_KINDS)
#: A mysql_close's records after its bpf_close: written past the bound when the bpf_close was.
_CLOSE_TAIL = (ev.BPF_WIRE, ev.BPF_CLOSE_RET)
#: Kernel batches written last, read when the bound is reached for closes still unfinished.
_TAIL_BATCHES = 3
_UNFINISHED_PREFIXES = ('{"k":"%s"' % ev.BPF_CLOSE, '{"k":"%s"' % ev.BPF_CLOSE_RET)


def format_size(n):
    """``n`` bytes as --max-capture spells it back: 1 GiB, 500 MiB, 64 KiB, or bytes."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return "%d %s" % (n >> shift, unit)
    return "%d byte%s" % (n, "" if n == 1 else "s")


class _Bound:
    """What was counted instead of written after the bound (the trailer's ``bound``)."""

    def __init__(self, max_bytes, reached_t):
        self.max_bytes = max_bytes
        self.reached_t = reached_t
        self.not_written = collections.Counter()
        self.kernel = collections.Counter()        # connection ends per cause (bpf_close, bpf_sock_close)
        self.kernel_gen = collections.Counter()    # ... of cause gc, per generation ("unknown": hidden)
        self.kernel_wire = collections.Counter()   # the kernel's wire verdicts (bpf_close_ret, bpf_sock_close)
        self.kernel_opened = 0                     # bpf_connect ok, bpf_sock_connect outside the library
        self.agent_opened = 0                      # conn_open
        self.agent = collections.Counter()         # conn_close (explicit_close), conn_destroy per cause
        self.agent_gen = collections.Counter()
        self.last_sample = {}                      # (kind, key) -> t of the last one written
        # The kernel's evidence of each end after the bound, compact: one row per distinct
        # evidence (cause, generation, socket, errors, wire), counted; the report decides each
        # row by analysis/attribute.decide(), so "server" and "unknown" are what they would be
        # in the detail (analysis/bound.py).
        self.rows = collections.Counter()          # json of one end's evidence -> ends
        self.brackets = {}                         # (pid, tid) -> the evidence of a mysql_close begun
        self.failed = set()                        # (pid, conn) of connects that failed after the bound
        self.unfinished = set()                    # (pid, conn) of closes written whose return was not yet
        self.pending = {}                          # (kind, key) -> the latest one held back (written at close)

    def count_close(self, event):
        kind = event.get("k")
        if kind == ev.BPF_CONNECT and event.get("ok") is True or kind == ev.BPF_SOCK_CONNECT and not event.get("lib"):
            self.kernel_opened += 1
        elif kind == ev.BPF_CONNECT:
            self.failed.add((event.get("pid"), event.get("conn")))
        elif kind == ev.CONN_OPEN:
            self.agent_opened += 1
        if kind in (ev.BPF_CLOSE, ev.BPF_CLOSE_RET, ev.BPF_WIRE, ev.BPF_SOCK_CLOSE):
            self._evidence(kind, event)
        if kind in (ev.BPF_CLOSE, ev.BPF_SOCK_CLOSE):
            cause = str(event.get("cause"))
            self.kernel[cause] += 1
            if cause == ev.GC:
                self.kernel_gen[_gen_key(event.get("gen"))] += 1
        if kind in (ev.BPF_CLOSE_RET, ev.BPF_SOCK_CLOSE):
            self.kernel_wire[str(event.get("wire"))] += 1
        elif kind == ev.CONN_CLOSE:
            self.agent[ev.EXPLICIT_CLOSE] += 1
        elif kind == ev.CONN_DESTROY:
            cause = str(event.get("cause"))
            self.agent[cause] += 1
            if cause == ev.GC:
                self.agent_gen[_gen_key(event.get("gen"))] += 1

    def _evidence(self, kind, event):
        """Keep what decide() reads of one kernel end: its bpf_close, sends and return, as one row."""
        bracket = (event.get("pid"), event.get("tid"))
        if kind == ev.BPF_CLOSE:
            self._row(self.brackets.pop(bracket, None))  # a close whose return was lost
            self.brackets[bracket] = {
                "k": kind, "cause": event.get("cause"), "gen": event.get("gen"), "sock": event.get("sock"),
                "last_errno": event.get("last_errno"), "eof": event.get("eof"),
                "failed": (event.get("pid"), event.get("conn")) in self.failed}
        elif kind == ev.BPF_WIRE:
            row = self.brackets.get(bracket)
            ret = event.get("ret")
            if row is not None and type(ret) is int and ret < 0:
                row["send_errors"] = sorted(set(row.get("send_errors", [])) | {ret})
        elif kind == ev.BPF_CLOSE_RET:
            row = self.brackets.pop(bracket, None)
            if row is not None:
                row.update(wire=event.get("wire"), send_err=event.get("send_err"), fin_first=event.get("fin_first"))
                self._row(row)
        else:  # bpf_sock_close: a MySQL socket outside the client library, one record per end
            if not event.get("lib"):
                self._row({"k": kind, "cause": event.get("cause"), "gen": event.get("gen"),
                           "wire": event.get("wire"), "quit_sent": event.get("quit_sent")})

    def _row(self, row):
        if row is not None:
            self.rows[json.dumps(row, sort_keys=True)] += 1

    def finishes(self, event):
        """True for the bpf_wire/bpf_close_ret of a close written before the bound: written too,
        so that no close in the detail lacks its return (its wire verdict)."""
        key = (event.get("pid"), event.get("conn"))
        if key not in self.unfinished:
            return False
        if event.get("k") == ev.BPF_CLOSE_RET:
            self.unfinished.discard(key)
        self.not_written[event["k"]] -= 1
        return True

    def count_lines(self, text):
        """The lines of a pre-encoded kernel batch (the fast path) past the bound: connects and
        closes counted; the lines that finish a close of the detail returned, to be written."""
        keep = []
        for line in text.splitlines(True):
            if line.startswith(_CLOSE_LINE_PREFIXES):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if self.unfinished and event.get("k") in _CLOSE_TAIL and self.finishes(event):
                    keep.append(line)
                else:
                    self.count_close(event)
        return keep

    def begun(self, texts):
        """The closes of the last written batches still waiting for their return."""
        for text in texts:
            for line in text.splitlines():
                if line.startswith(_UNFINISHED_PREFIXES):
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    key = (event.get("pid"), event.get("conn"))
                    if event.get("k") == ev.BPF_CLOSE:
                        self.unfinished.add(key)
                    else:
                        self.unfinished.discard(key)

    def trailer(self):
        for row in self.brackets.values():  # closes whose return never came
            self._row(row)
        self.brackets = {}
        rows = [[n, json.loads(row)] for row, n in sorted(self.rows.items())]
        return {"max_bytes": self.max_bytes, "reached_t": self.reached_t,
                "not_written": {k: n for k, n in self.not_written.items() if n},
                "closes_after": {"kernel": {"by_cause": dict(self.kernel), "gc_by_generation": dict(self.kernel_gen),
                                            "wire": dict(self.kernel_wire), "opened": self.kernel_opened,
                                            "rows": rows},
                                 "agent": {"by_cause": dict(self.agent), "gc_by_generation": dict(self.agent_gen),
                                           "opened": self.agent_opened}}}


def _gen_key(gen):
    return str(gen) if type(gen) is int else "unknown"


#: The output path exists and ``--force`` was not given (the one writer's error, tracer/files.py).
CaptureExistsError = OutputExistsError


def _real_path(fd, path):
    try:
        return os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        return os.path.abspath(path)


class CaptureWriter:
    """Writes one capture: ``write_header`` once, ``emit`` from any thread, ``close`` with a trailer."""

    def __init__(self, path, force=False, owner=None, max_bytes=0, on_bound=None):
        self.path = path
        #: the bound in bytes (0: none); ``on_bound(reached_t, max_bytes)`` is called once, outside
        #: the lock, when it is reached (the recorder's note; tests/unit/test_capture_writer.py)
        self.max_bytes = int(max_bytes or 0)
        self.on_bound = on_bound
        self.bound = None          # a _Bound once reached
        self._queued = 0           # bytes written or queued (the JSON lines are ASCII: chars == bytes)
        self._tail = collections.deque(maxlen=_TAIL_BATCHES)   # the last kernel batches written
        self._fd = open_private(path, force=force, owner=owner)
        #: where the file really is (the kernel's word for the open fd): the closing lines
        #: name this if it is not where ``path`` points now
        self.real_path = _real_path(self._fd, path)
        self._lock = threading.Lock()
        self._buf = []
        self._counts = collections.Counter()
        self._closed = False
        self._buf_events = 0
        #: the first OSError writing the capture (disk full, file system gone): from then on
        #: events are counted in ``lost_events`` instead of written, and nothing raises
        #: (tests/system/test_trust.py::test_a_full_disk_loses_the_capture_not_the_exit_status)
        self.failed = None
        self.lost_events = 0
        self.trailer_written = False
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="trace-quit-flush", daemon=True)

    def write_header(self, header):
        """Write the header record first and start the periodic flusher."""
        record = {"format": ev.FORMAT, "version": ev.VERSION, "clock": "CLOCK_MONOTONIC",
                  "t": ev.now_ns(), "kernel": platform.release(), "machine": platform.machine()}
        record.update(header)
        line = ev.encode(record)
        with self._lock:
            self._write(line)
            self._queued += len(line)
        self._flusher.start()

    def emit(self, event):
        """Queue one event record (a dict with at least ``k`` and ``t``)."""
        line = ev.encode(event)
        reached = False
        with self._lock:
            if self._closed:
                return
            kind = event.get("k")
            self._counts[kind] += 1
            if self.failed is not None:
                self.lost_events += 1
                return
            write = True
            if self.max_bytes and self._queued >= self.max_bytes and kind not in ALWAYS_WRITTEN:
                reached = self._reach(event.get("t"))
                write = self._sampled(event, kind, line)
            if write:
                self._buf.append(line)
                self._buf_events += 1
                self._queued += len(line)
        self._reached(reached)

    def emit_text(self, text, counts):
        """Queue already-encoded event lines (one string of whole lines), counted per kind."""
        reached = False
        with self._lock:
            if self._closed:
                return
            self._counts.update(counts)
            n = sum(counts.values())
            if self.failed is not None:
                self.lost_events += n
                return
            if self.max_bytes and self._queued >= self.max_bytes:
                reached = self._reach()
                self.bound.not_written.update(counts)
                if any(k in counts for k in _COUNTED_KERNEL_KINDS):
                    keep = self.bound.count_lines(text)
                    if keep:
                        self._buf.extend(keep)
                        self._buf_events += len(keep)
                        self._queued += sum(map(len, keep))
            else:  # a batch that starts under the bound is written whole (one chunk past it at most)
                self._buf.append(text)
                self._buf_events += n
                self._queued += len(text)
                if self.max_bytes:
                    self._tail.append(text)
        self._reached(reached)

    def _reach(self, t=None):
        """Enter the bounded state (under the lock); True the first time. ``reached_t`` is the
        time of the first event not written (now, for a pre-encoded batch)."""
        if self.bound is not None:
            return False
        self.bound = _Bound(self.max_bytes, t if type(t) is int else ev.now_ns())
        self.bound.begun(self._tail)
        self._tail.clear()
        return True

    def _reached(self, reached):
        if reached and self.on_bound is not None:
            try:
                self.on_bound(self.bound.reached_t, self.max_bytes)
            except Exception:
                pass

    def _sampled(self, event, kind, line):
        """After the bound: True when this record is written anyway (a sample due), else counted."""
        bound = self.bound
        if kind in SAMPLED:
            key = (kind, event.get("pid") if SAMPLED[kind] else None)
            t = event.get("t") if type(event.get("t")) is int else 0
            last = bound.last_sample.get(key)
            if last is None or t - last >= BOUND_SAMPLE_EVERY_NS:
                bound.last_sample[key] = t
                if bound.pending.pop(key, None) is not None:
                    bound.not_written[kind] += 1
                return True
            if key in bound.pending:
                bound.not_written[kind] += 1
            bound.pending[key] = line   # the latest is kept: written at close if no later one is
            return False
        bound.not_written[kind] += 1
        if bound.unfinished and kind in _CLOSE_TAIL and bound.finishes(event):
            return True
        bound.count_close(event)
        return False

    @property
    def counts(self):
        """Events emitted so far, per kind (written, or counted after the bound)."""
        with self._lock:
            return dict(self._counts)

    def flush(self):
        """Write out everything queued so far."""
        with self._lock:
            self._flush_locked()

    def close(self, trailer):
        """Flush, append the trailer (counts per kind added here), fsync and close."""
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            if self.bound is not None and self.bound.pending:
                # The last record of each sampled kind: the timeline and totals reach the end.
                self._buf.extend(self.bound.pending.values())
                self._buf_events += len(self.bound.pending)
                self.bound.pending.clear()
            self._flush_locked()
            record = {"k": ev.TRAILER, "t": ev.now_ns(), "counts": dict(self._counts)}
            record.update(trailer)
            if self.bound is not None:
                record["bound"] = self.bound.trailer()
            self._closed = True
            try:
                if self.failed is None:
                    self._write(ev.encode(record))
                    self.trailer_written = True
                os.fsync(self._fd)
            except OSError as exc:
                self.failed = self.failed or exc
            finally:
                os.close(self._fd)

    def failure(self):
        """One sentence on what could not be written, or None when the capture is whole."""
        if self.failed is None:
            return None
        return ("the capture %s could not be written (%s): %d events%s were lost; what is in it is cut short"
                % (self.path, self.failed.strerror or self.failed, self.lost_events,
                   "" if self.trailer_written else " and its trailer"))

    def _flush_loop(self):
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.flush()  # never raises: a failure is kept in self.failed and said at the end

    def _flush_locked(self):
        if self._buf and not self._closed:
            data = "".join(self._buf)
            n, self._buf, self._buf_events = self._buf_events, [], 0
            if self.failed is not None:
                self.lost_events += n
                return
            try:
                self._write(data)
            except OSError as exc:
                self.failed = exc
                self.lost_events += n

    def _write(self, text):
        data = text.encode("utf-8", "replace")
        while data:
            n = os.write(self._fd, data)
            data = data[n:]
