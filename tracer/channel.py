"""The agent's channel on the tracer side: a FIFO the traced processes write event lines to.

A FIFO rather than an inherited pipe fd because ``subprocess`` closes inherited fds: a
Python program the traced program spawns finds the FIFO by the path in its environment.
It lives in a private 0700 directory owned by the user the program runs as.
"""

import fcntl
import json
import os
import shutil
import tempfile

F_SETPIPE_SZ = 1031           # linux/fcntl.h
PIPE_SIZE = 1 << 20           # 1 MiB: the agent's writes never wait for the reader
MAX_PARTIAL = 1 << 16         # a "line" longer than this without a newline is not the agent's


class AgentChannel:
    """Creates the FIFO, reads complete lines from it, removes it on close."""

    def __init__(self, owner_uid, owner_gid):
        self.dir = tempfile.mkdtemp(prefix="trace-quit-")
        self.path = os.path.join(self.dir, "agent.fifo")
        os.mkfifo(self.path, 0o600)
        os.chown(self.path, owner_uid, owner_gid)
        os.chown(self.dir, owner_uid, owner_gid)
        # O_RDWR: opening never blocks and the FIFO never reports EOF between writers.
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size for an unprivileged tracer: keep the default
        self._partial = b""
        self.invalid_lines = 0

    def read_events(self):
        """Return the complete event dicts available now (never blocks)."""
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
            self.invalid_lines += 1
        events = []
        for line in lines:
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                self.invalid_lines += 1
                continue
            if isinstance(event, dict) and isinstance(event.get("k"), str):
                event["src"] = "agent"  # whatever wrote it, it came through the agent's channel
                events.append(event)
            else:
                self.invalid_lines += 1
        return events

    def close(self):
        try:
            os.close(self.fd)
        except OSError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
