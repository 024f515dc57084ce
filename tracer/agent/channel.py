"""The agent's channel writer: records queued in the program, written to the tracer's FIFO.

* events are buffered and written in batches at safe points: connection opens and closes
  (when the buffer is old or large), before ``fork``/``exec``, on ``os._exit``, at exit
  (the last atexit handler) and after it (tracer/agent/process.py); the connection records
  are text from cached fragments, their call sites formatted once per site at the write
  (tracer/agent/stacks.py; the agent's cost per connection: docs/performance.md);
* lines leave through a non-blocking FIFO in writes of at most PIPE_BUF bytes (each line is
  bounded to fit), so the lines of forked processes sharing it never interleave; when it is
  full, events are counted as lost, never waited for (but at exit, for a bounded time);
* it writes only to an fd whose (st_dev, st_ino) is still its channel's: a program that
  closed it and reused the number is never written to; the FIFO is re-opened by path, or
  the agent goes quiet and counts what it lost.

``Channel`` is a part of the ``Agent`` (runtime.py), which reaches it only through ``self``.
"""

import collections
import json
import os
import select
import stat

PIPE_BUF = 4096
FLUSH_INTERVAL_NS = 50 * 1000 * 1000  # a connection event writes the buffer once it is this old ...
FLUSH_EVENTS = 256                    # ... or this long
EXIT_WAIT_NS = 1000 * 1000 * 1000     # at exit, a full channel is waited for this long in all
MAX_QUEUED = 100000                   # events; beyond this they are counted as lost
FIELD_LIMITS = (512, 128, 32)         # string lengths tried, in turn, when a line exceeds PIPE_BUF


class Channel:
    """The agent's queue of records and the FIFO they are written to."""

    # Class attributes, not module globals: read on hot paths that also run during finalisation.
    PIPE_BUF = PIPE_BUF
    FLUSH_INTERVAL_NS = FLUSH_INTERVAL_NS
    FLUSH_EVENTS = FLUSH_EVENTS
    EXIT_WAIT_NS = EXIT_WAIT_NS
    MAX_QUEUED = MAX_QUEUED
    FIELD_LIMITS = FIELD_LIMITS

    def _open_channel(self, channel_path):
        """Open the FIFO ``channel_path`` (OSError when it cannot be, or is no FIFO)."""
        self.channel_path = channel_path
        # Hold a read end too (never read): if the tracer is killed, the FIFO keeps a reader,
        # so writes fill it and count as lost instead of raising SIGPIPE in a program that
        # restored SIGPIPE's default action.
        self.keepalive_fd = os.open(channel_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.fd = os.open(channel_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            st = os.fstat(self.fd)
        except OSError:
            os.close(self.keepalive_fd)
            raise
        if not stat.S_ISFIFO(st.st_mode):
            os.close(self.fd)
            os.close(self.keepalive_fd)
            raise OSError("%s is not a FIFO" % channel_path)
        #: What our channel is: an fd whose fstat says otherwise is the program's now.
        self.channel_id = (st.st_dev, st.st_ino)
        self.queue = collections.deque()
        self.last_flush = 0
        self.flushing = set()    # idents of the threads writing right now
        self.torn = False        # a partial write left a line without its newline
        self.lost = 0
        self.lost_reported = 0
        # Past this monotonic time a full channel loses records; before it (set at exit, when
        # nothing runs after us: a process ending at once, a worker of a server) they wait.
        self.exit_deadline = 0
        self.final_said = False
        self.poll_writable = _poll_writable
        # Bound once, so the hot paths and finalisation never look up module globals.
        self.write = os.write
        self.fstat = os.fstat
        self.dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode
        # json's encode() builds a C encoder on every call; flushing encodes with one made once.
        self.encode_chunks = _c_encoder() or (lambda obj, level, dumps=self.dumps: (dumps(obj),))
        self.join = "".join
        self.loads = json.loads
        self.cut = _cut
        self.os_open = os.open
        self.os_stat = os.stat
        self.is_fifo = stat.S_ISFIFO

    def emit(self, kind, **fields):
        """Queue one event; write the buffer out when it is due and this is a safe point."""
        self._queue(kind, fields)
        if (fields.get("t", 0) - self.last_flush >= self.FLUSH_INTERVAL_NS or len(self.queue) >= self.FLUSH_EVENTS
                or self.finalizing or self.is_finalizing()):
            # Never from inside a collection on this thread (a destroy callback, a __del__).
            if self.ident() not in self.collecting:
                self.flush()

    def _queue(self, kind, fields):
        try:
            if self.stopped:
                return
            fields["k"] = kind
            fields["t"] = self.now()
            fields["src"] = "agent"
            fields["pid"] = self.pid
            # Thread.native_id: get_native_id() is a gettid() system call each time.
            thread = self.threads.get(self.ident())
            fields["tid"] = thread.native_id if thread is not None else self.native_tid()
            if len(self.queue) >= self.MAX_QUEUED:
                self.lost += 1
                return
            self.queue.append(fields)
        except Exception:
            pass

    def flush(self):
        """Encode queued events and write them in PIPE_BUF-sized, line-aligned chunks."""
        ident = self.ident()
        flushing = self.flushing
        if ident in flushing or self.stopped:
            return  # re-entered on this thread (a collection set off by our own allocations)
        # Other threads may flush at the same time: each pops whole events off the deque and
        # writes whole lines, so they never mix; they are not waited for (a daemon thread
        # frozen in a write at exit must not silence the shutdown events).
        flushing.add(ident)
        try:
            self._flush()
        except Exception:
            pass
        finally:
            flushing.discard(ident)

    def _flush(self):
        queue = self.queue
        self.last_flush = self.now()
        self._queue_gc_counts()  # tracer/agent/collector.py
        if self.lost != self.lost_reported and (queue or self.exit_deadline):
            # Said with the next write, or at exit on its own: a loss is never left unsaid
            # while the channel can still take a line (tests/integration/test_agent.py).
            n = self.lost - self.lost_reported
            self.lost_reported = self.lost
            self._queue(self.ev.AGENT_LOST, {"n": n})
        if not queue:
            return
        if not self._channel_ok():
            self.lost += len(queue)
            queue.clear()
            return
        chunk = []
        size = 0
        encode = self.encode_chunks
        join = self.join
        while queue:
            try:
                event = queue.popleft()
            except IndexError:
                break
            try:
                if event.__class__ is tuple:
                    text, stack = event
                    if stack is not None:
                        text = text + self._format_stack(stack)[1] + "}"
                    line = (text + "\n").encode("utf-8", "replace")
                    if len(line) > self.PIPE_BUF:
                        line = self._bounded(self.loads(text))
                else:
                    line = self._encoded(event, encode, join)
            except Exception:
                line = None
            if line is None:
                self.lost += 1
                continue
            if size + len(line) > self.PIPE_BUF and chunk:
                self._write_chunk(chunk)
                chunk = []
                size = 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write_chunk(chunk)

    def _encoded(self, event, encode, join):
        """One queued dict as a line of bytes, at most PIPE_BUF long (``_bounded``); None if it cannot be."""
        stack = event.get("stack")
        if stack.__class__ is tuple:
            # The stack is most of the line and repeats: its JSON comes from the cache,
            # spliced in for the null (a key can only appear unescaped as a key).
            strings, encoded = self._format_stack(stack)
            event["stack"] = None
            text = join(encode(event, 0)).replace('"stack":null', '"stack":' + encoded, 1)
            event["stack"] = strings
        else:
            text = join(encode(event, 0))
        line = (text + "\n").encode("utf-8", "replace")
        if len(line) > self.PIPE_BUF:
            line = self._bounded(event)
        return line

    def _bounded(self, event):
        """The event as one line of at most self.PIPE_BUF bytes: strings cut, lists shortened; None if it cannot."""
        for limit in self.FIELD_LIMITS:
            small = {}
            for key, value in event.items():
                small[key] = self.cut(value, limit)
            line = (self.dumps(small) + "\n").encode("utf-8", "replace")
            if len(line) <= self.PIPE_BUF:
                return line
        return None

    def _write_chunk(self, lines):
        data = b"".join(lines)
        try:
            if self.torn and self.write(self.fd, b"\n") == 1:
                self.torn = False
            if self.torn:
                raise BlockingIOError  # a cut line still open: nothing may follow it yet
            written = self.write(self.fd, data)  # <= PIPE_BUF to a FIFO: all or nothing (EAGAIN)
        except BlockingIOError:
            # Full. At exit nothing runs after us: wait (bounded) for the tracer to drain it.
            if not self._wait_writable() or not self._retry_write(data):
                self.lost += len(lines)
            return
        except OSError:
            self.lost += len(lines)  # the tracer is gone: stay quiet
            return
        if written == len(data):
            return
        # A partial write (not a FIFO after all?): what did not go is lost, and the line cut
        # short is ended by a newline before anything else goes out, so it cannot run into
        # the next one (the reader rejects it as one malformed line).
        done = 0
        for line in lines:
            if written < len(line):
                break
            written -= len(line)
            done += 1
        self.lost += len(lines) - done
        if written:
            self.torn = True
            try:
                if self.write(self.fd, b"\n") == 1:
                    self.torn = False
            except OSError:
                pass

    def _wait_writable(self):
        """At exit, until the deadline: True once the channel has room (never outside exit)."""
        left = self.exit_deadline - self.now()
        if self.exit_deadline == 0 or left <= 0 or self.torn:
            return False
        return self.poll_writable(self.fd, left)

    def _retry_write(self, data):
        while True:
            try:
                if self.write(self.fd, data) == len(data):
                    return True
                return False   # not a FIFO after all: a partial write (counted as lost)
            except BlockingIOError:
                if not self._wait_writable():
                    return False
            except OSError:
                return False

    def _channel_ok(self):
        """True when self.fd is still our FIFO (a program may close it and reuse the number)."""
        if self.fd >= 0:
            try:
                st = self.fstat(self.fd)
                if (st.st_dev, st.st_ino) == self.channel_id:
                    return True
            except OSError:
                pass
            self.fd = -1  # the program's now (or closed): never write to it nor close it
            self.torn = False
        return self._reopen()

    def _reopen(self):
        """Open our FIFO again by path, if it is still the same FIFO; else stay quiet."""
        path = self.channel_path
        try:
            st = self.os_stat(path)
            if not self.is_fifo(st.st_mode) or (st.st_dev, st.st_ino) != self.channel_id:
                return False
            if not self._is_ours(self.keepalive_fd):
                self.keepalive_fd = -1
                self.keepalive_fd = self.os_open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            fd = self.os_open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        if not self._is_ours(fd):
            os.close(fd)  # replaced between stat and open
            return False
        self.fd = fd
        return True

    def _is_ours(self, fd):
        if fd < 0:
            return False
        try:
            st = self.fstat(fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.channel_id

    def _push_text(self, text, stack, t):
        """Queue a record already encoded (``text``), its stack (``stack()``) to be appended at flush."""
        if self.stopped:
            return
        queue = self.queue
        if len(queue) >= self.MAX_QUEUED:
            self.lost += 1
            return
        queue.append((text, stack))
        if (t - self.last_flush >= self.FLUSH_INTERVAL_NS or len(queue) >= self.FLUSH_EVENTS
                or self.finalizing or self.is_finalizing()):
            if self.ident() not in self.collecting:
                self.flush()


def _poll_writable(fd, timeout_ns, poll=select.poll, pollout=select.POLLOUT):
    """Whether ``fd`` can be written within ``timeout_ns`` (bound at import: it runs at exit)."""
    try:
        p = poll()
        p.register(fd, pollout)
        return bool(p.poll(max(1, timeout_ns // 1000000)))
    except Exception:
        return False


def _c_encoder():
    """json's C encoder with the agent's settings (compact, ASCII, str() for the unknown); None without _json."""
    try:
        from json import encoder

        return encoder.c_make_encoder(None, str, encoder.encode_basestring_ascii, None, ":", ",",
                                      False, False, True)
    except Exception:
        return None


def _cut(value, limit):
    """``value`` with strings (also inside lists and dicts) cut to ``limit`` characters."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "..."
    if isinstance(value, (list, tuple)):
        return [_cut(v, limit) for v in value[:limit]]
    if isinstance(value, dict):
        return {k: _cut(v, limit) for k, v in list(value.items())[:limit]}
    return value
