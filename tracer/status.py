"""A running tally of the capture, for the live status line and the end-of-run summary."""

import collections
import os
import stat
import time

from trace_quit.tracer import events as ev
from trace_quit.tracer.records import typed
from trace_quit.tracer.terminal import escape

#: The generations the status line counts (gc_counts' keys; anything else is not a generation).
GENERATIONS = ("0", "1", "2")


#: The agent's records of an open connection that its end is decided with (a pool's server-gone error).
_CONNECTION_RECORDS = (ev.CONN_OPEN, ev.POOL)


class Tally:
    """Counts what the events say so far: live connections, COM_QUITs by cause, collections."""

    def __init__(self):
        self.opened = 0
        self.quits = collections.Counter()       # cause -> n (agent's view, else the kernel's)
        self.collections = {}                    # pid -> {"0": n, "1": n, "2": n}
        self.lost = {"agent": 0, "bpf": 0}
        self.bpf_closes = 0
        self.bpf_opens = 0
        self.agent_pids = set()                  # processes whose agent said agent_start
        self._records = {}                       # (pid, conn) -> the agent's records of an open connection

    def add(self, event):
        event = typed(event)  # the recorder's dict: read as the analysis reads it (tracer/records.py)
        kind = event.k
        if kind == ev.AGENT_START:
            self.agent_pids.add(event.pid)
        elif kind == ev.CONN_OPEN:
            self.opened += 1
        elif kind in (ev.CONN_CLOSE, ev.CONN_DESTROY):
            from trace_quit.analysis.attribute import decide_agent_end  # the report's rules, not our own
            verdict = decide_agent_end(self._records.pop((event.pid, event.conn), []) + [event])
            self.quits[verdict.cause if verdict is not None else ev.UNKNOWN] += 1
        if kind in _CONNECTION_RECORDS and event.conn is not None:
            self._records.setdefault((event.pid, event.conn), []).append(event)
        elif kind == ev.GC_COUNTS:
            self.collections[event.pid] = {str(gen): _count(n) for gen, n in (event.by_gen or {}).items()
                                           if gen in GENERATIONS}
        elif kind == ev.AGENT_LOST:
            self.lost["agent"] += _count(event.n or 0)
        elif kind == ev.BPF_CONNECT and event.ok:
            self.bpf_opens += 1
        elif kind == ev.BPF_CLOSE:
            self.bpf_closes += 1
        elif kind == ev.BPF_STATS:
            self.lost["bpf"] = int(event.dropped or 0)

    def add_counts(self, counts, connects_ok=0):
        """What a batch of eBPF events adds (BpfSession's emit_text): closes and successful connects."""
        self.bpf_opens += connects_ok
        self.bpf_closes += counts.get(ev.BPF_CLOSE, 0)

    @property
    def live(self):
        """Open connections now: the agent's count when it runs, else the kernel's."""
        if self.opened:
            return self.opened - sum(self.quits.values())
        return self.bpf_opens - self.bpf_closes

    def gc_by_generation(self):
        total = collections.Counter()
        for by_gen in self.collections.values():
            for gen, n in by_gen.items():
                total[gen] += n
        return total


def _count(value):
    """A non-negative int, else ValueError: the channel rejects the record (tracer/channel.py)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("%.40r is not a count" % (value,))
    return value


def controlling_terminal_device():
    """The device number (st_rdev) of our controlling terminal, else None (/proc/self/stat's tty_nr).

    Not ``fstat(open("/dev/tty"))``: that is /dev/tty's own number (5, 0), which never equals
    the pts behind it (136, N): compared with it, every terminal looked private."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat_line = f.read()
        tty_nr = int(stat_line[stat_line.rindex(b")") + 2:].split()[4])
    except (OSError, ValueError, IndexError):
        return None
    if tty_nr == 0:
        return None
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def private_terminal():
    """The controlling terminal, open for writing, if the program cannot write to it; else None.

    The program inherits our fds 0-2: a live line rewritten in place (``\\r\\x1b[2K``) on a
    terminal one of them refers to would erase the program's own output, or the prompt and
    what the user typed. So the line is drawn only on a terminal none of them is
    (``trace-quit -- app > app.log 2>&1`` shows it; a shared terminal gets the report at the
    end only: tests/integration/test_cli_status.py, with a real controlling pseudo-terminal)."""
    device = controlling_terminal_device()
    if device is None:
        return None
    for shared in (0, 1, 2):
        try:
            st = os.fstat(shared)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == device:
            return None
    try:
        fd = os.open("/dev/tty", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.fdopen(fd, "w", encoding="utf-8", errors="replace")
    except BaseException:
        os.close(fd)
        raise


class StatusLine:
    """One line rewritten in place, only on a terminal the traced program does not write to."""

    def __init__(self, tally, stream=None, interval_s=0.5):
        self.tally = tally
        self.stream = stream if stream is not None else private_terminal()
        try:
            self.enabled = self.stream is not None and self.stream.isatty()
        except (OSError, ValueError):
            self.enabled = False
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._last = 0.0
        self._shown = False

    def maybe_show(self):
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        t = self.tally
        quits = " ".join("%s %d" % (cause, n) for cause, n in sorted(t.quits.items())) or "none"
        gens = t.gc_by_generation()
        # Every number labelled (gen0/gen1/gen2: collections per generation), not "gc 147/13/1".
        line = "trace-quit %5.1fs | live %d | COM_QUIT %s | collections gen0 %d gen1 %d gen2 %d | lost %d" % (
            now - self.started, t.live, quits, gens["0"], gens["1"], gens["2"],
            t.lost["agent"] + t.lost["bpf"])
        try:
            self.stream.write("\r\x1b[2K" + escape(line[:200]))  # data only: tracer/terminal.py
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False  # the terminal went away: the run goes on without the line
            return
        self._shown = True

    def clear(self):
        if self._shown:
            try:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._shown = False
        if self.stream is not None:
            try:
                self.stream.close()
            except (OSError, ValueError):
                pass
