"""The agent's channel on the tracer side: a FIFO the traced processes write event lines to.

A FIFO rather than an inherited pipe fd because ``subprocess`` closes inherited fds: a
Python program the traced program spawns finds the FIFO by the path in its environment.
It is owned by the user the program runs as, in a 0711 directory of the tracer's own.

The traced program can write anything into it: only the agent's own kinds
(``events.AGENT_KINDS``), each valid by ``events.check()`` and within ``events.check_bounds()``
and stamped within this run, come out of ``read_events``;
every other line is counted in ``rejected`` by the process it claims to come from, and no
line can raise out of the reader (tests/unit/test_channel.py, tests/system/test_trust.py).
"""

import collections
import fcntl
import json
import os
import shutil
import tempfile

from trace_quit.tracer import events as ev

F_SETPIPE_SZ = 1031           # linux/fcntl.h
PIPE_SIZE = 1 << 20           # 1 MiB: the agent's writes never wait for the reader
MAX_PARTIAL = 1 << 16         # a "line" longer than this without a newline is not the agent's
UNKNOWN_PID = "?"             # the rejected line named no process (not JSON, or no integer pid)
SLACK_NS = 10 * 10**9         # a record's time may be this far outside [channel created, now]
MAX_REJECTED_PIDS = 1000      # distinct claimed pids counted apart; the rest under UNKNOWN_PID


class AgentChannel:
    """Creates the FIFO, reads complete lines from it, removes it on close."""

    def __init__(self, owner_uid, owner_gid):
        self.dir = tempfile.mkdtemp(prefix="trace-quit-")
        try:
            self.path = os.path.join(self.dir, "agent.fifo")
            os.mkfifo(self.path, 0o600)
            os.chown(self.path, owner_uid, owner_gid)
            # The directory stays the tracer's (root's under sudo), searchable only: the program
            # reaches its FIFO but cannot add, swap or plant anything beside it, and nothing the
            # tracer opens or removes here is the program user's choice
            # (tests/system/test_attach_security.py).
            os.chmod(self.dir, 0o711)
            # O_RDWR: opening never blocks and the FIFO never reports EOF between writers.
            self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        try:
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size for an unprivileged tracer: keep the default
        self._partial = b""
        self.t_created = ev.now_ns()
        #: claimed pid (int, or UNKNOWN_PID) -> lines rejected: not JSON, not an object,
        #: not an agent kind, or not valid for its kind.
        self.rejected = collections.Counter()
        #: the first reason a line was rejected, per claimed pid (for the report's note)
        self.first_reason = {}

    @property
    def invalid_lines(self):
        """All rejected lines, whatever process they claimed."""
        return sum(self.rejected.values())

    def reject(self, line_or_event, reason):
        """Count one line (bytes, or a decoded record that failed later) as rejected."""
        pid = UNKNOWN_PID
        if isinstance(line_or_event, dict):
            claimed = line_or_event.get("pid")
            if isinstance(claimed, int) and not isinstance(claimed, bool) and 0 < claimed <= ev.PID_MAX:
                pid = claimed
        if pid not in self.rejected and len(self.rejected) >= MAX_REJECTED_PIDS:
            pid = UNKNOWN_PID  # forged pids cannot grow the trailer without bound
        self.rejected[pid] += 1
        self.first_reason.setdefault(pid, reason)

    def read_events(self):
        """Return the agent events available now (never blocks, never raises on content)."""
        chunks = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        if not chunks:
            return []
        data = self._partial + b"".join(chunks)
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_PARTIAL:
            self._partial = b""
            self.reject(None, "a line longer than %d bytes" % MAX_PARTIAL)
        events = []
        for line in lines:
            if not line:
                continue
            event = self._decode(line)
            if event is not None:
                events.append(event)
        return events

    def _decode(self, line):
        """One line as an agent event, or None (counted) when it is not one."""
        try:
            event = json.loads(line)
        except Exception:
            self.reject(None, "not JSON")
            return None
        if not isinstance(event, dict):
            self.reject(None, "not a JSON object")
            return None
        kind = event.get("k")
        if not isinstance(kind, str) or kind not in ev.AGENT_KINDS:
            self.reject(event, "kind %.40r is not the agent's" % (kind,))
            return None
        # Whatever wrote it, it came through the agent's channel: stamped before the check, so a
        # record is judged as what it is (tests/unit/test_channel.py).
        event["src"] = ev.SRC_AGENT
        try:
            ev.check_bounds(ev.check(event))
            t = event["t"]
            # The agent stamps CLOCK_MONOTONIC, as we do, and loads only after this channel exists.
            if not self.t_created - SLACK_NS <= t <= ev.now_ns() + SLACK_NS:
                raise ev.SchemaError("%s: t is %d, outside this run (%d..now)" % (kind, t, self.t_created))
        except Exception as exc:  # SchemaError, or a validator tripping over odd input
            self.reject(event, "%s" % (str(exc)[:120] or type(exc).__name__))
            return None
        return event

    def rejected_summary(self):
        """{"total": n, "by_pid": {"pid": n}, "first_reason": {"pid": text}} for the trailer."""
        return {"total": self.invalid_lines,
                "by_pid": {str(pid): n for pid, n in sorted(self.rejected.items(), key=lambda kv: str(kv[0]))},
                "first_reason": {str(pid): r for pid, r in self.first_reason.items()}}

    def rejected_note(self):
        """The note that says how many lines were rejected, and from which process."""
        parts = []
        by_pid = sorted(self.rejected.items(), key=lambda kv: (-kv[1], str(kv[0])))
        for pid, n in by_pid[:5]:  # the most: forged pids cannot make this line a page long
            who = "no process named" if pid == UNKNOWN_PID else "pid %d" % pid
            parts.append("%s: %d (first: %s)" % (who, n, self.first_reason.get(pid, "?")))
        if len(by_pid) > 5:
            parts.append("%d more processes: %d" % (len(by_pid) - 5, sum(n for _, n in by_pid[5:])))
        return ("%d %s rejected on the agent channel (not the agent's records; kept out of the capture): %s"
                % (self.invalid_lines, "line was" if self.invalid_lines == 1 else "lines were", "; ".join(parts)))

    def close(self):
        try:
            os.close(self.fd)
        except OSError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
