"""The capture file writer: header, streamed events, trailer (format in docs/capture-format.md).

Line-oriented JSON, append-only. Events are buffered and flushed at least every
``FLUSH_INTERVAL_S`` so a SIGKILLed tracer leaves a file readable up to its last flush.
The file is created 0600, never through a symlink, never over an existing file unless
``force``, and handed to the invoking (sudo) user.
"""

import collections
import os
import platform
import threading

from trace_quit.tracer import events as ev
from trace_quit.tracer.errors import OutputExistsError
from trace_quit.tracer.files import open_private  # noqa: F401  (re-exported: the capture's opener)

FLUSH_INTERVAL_S = 0.1


#: The output path exists and ``--force`` was not given (the one writer's error, tracer/files.py).
CaptureExistsError = OutputExistsError


class CaptureWriter:
    """Writes one capture: ``write_header`` once, ``emit`` from any thread, ``close`` with a trailer."""

    def __init__(self, path, force=False, owner=None):
        self.path = path
        self._fd = open_private(path, force=force, owner=owner)
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
        with self._lock:
            self._write(ev.encode(record))
        self._flusher.start()

    def emit(self, event):
        """Queue one event record (a dict with at least ``k`` and ``t``)."""
        line = ev.encode(event)
        with self._lock:
            if self._closed:
                return
            self._counts[event.get("k")] += 1
            if self.failed is not None:
                self.lost_events += 1
                return
            self._buf.append(line)
            self._buf_events += 1

    def emit_text(self, text, counts):
        """Queue already-encoded event lines (one string of whole lines), counted per kind."""
        with self._lock:
            if self._closed:
                return
            self._counts.update(counts)
            n = sum(counts.values())
            if self.failed is not None:
                self.lost_events += n
                return
            self._buf.append(text)
            self._buf_events += n

    @property
    def counts(self):
        """Events written so far, per kind."""
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
            self._flush_locked()
            record = {"k": ev.TRAILER, "t": ev.now_ns(), "counts": dict(self._counts)}
            record.update(trailer)
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
