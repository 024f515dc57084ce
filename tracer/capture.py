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

FLUSH_INTERVAL_S = 0.1


class CaptureExistsError(Exception):
    """The output path exists and ``--force`` was not given."""


def open_private(path, force=False, owner=None, mode=0o600):
    """Create ``path`` 0600 without following a symlink; chown it to ``owner=(uid, gid)``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if force:
        # A symlink planted at the path is never followed, even with --force: replace the link.
        if os.path.islink(path):
            os.unlink(path)
        flags |= os.O_TRUNC
    else:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CaptureExistsError(path) from None
    os.fchmod(fd, mode)  # umask may have narrowed it, never widened; force 0600 exactly
    if owner is not None:
        os.fchown(fd, owner[0], owner[1])
    return fd


class CaptureWriter:
    """Writes one capture: ``write_header`` once, ``emit`` from any thread, ``close`` with a trailer."""

    def __init__(self, path, force=False, owner=None):
        self.path = path
        self._fd = open_private(path, force=force, owner=owner)
        self._lock = threading.Lock()
        self._buf = []
        self._counts = collections.Counter()
        self._closed = False
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
            self._buf.append(line)
            self._counts[event.get("k")] += 1

    def emit_text(self, text, counts):
        """Queue already-encoded event lines (one string of whole lines), counted per kind."""
        with self._lock:
            if self._closed:
                return
            self._buf.append(text)
            self._counts.update(counts)

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
            self._write(ev.encode(record))
            self._closed = True
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)

    def _flush_loop(self):
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except OSError:
                return  # disk full or file gone: the main thread reports it at close

    def _flush_locked(self):
        if self._buf and not self._closed:
            data = "".join(self._buf)
            self._buf = []
            self._write(data)

    def _write(self, text):
        data = text.encode("utf-8", "replace")
        while data:
            n = os.write(self._fd, data)
            data = data[n:]
