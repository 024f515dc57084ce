"""A running tally of the capture, for the live status line and the end-of-run summary."""

import collections
import sys
import time

from trace_quit.tracer import events as ev


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

    def add(self, event):
        kind = event.get("k")
        if kind == ev.AGENT_START:
            self.agent_pids.add(event.get("pid"))
        elif kind == ev.CONN_OPEN:
            self.opened += 1
        elif kind == ev.CONN_CLOSE:
            self.quits[ev.EXPLICIT_CLOSE] += 1
        elif kind == ev.CONN_DESTROY:
            self.quits[event.get("cause") or ev.UNKNOWN] += 1
        elif kind == ev.GC_COUNTS:
            self.collections[event.get("pid")] = {str(gen): _count(n) for gen, n in (event.get("by_gen") or {}).items()}
        elif kind == ev.AGENT_LOST:
            self.lost["agent"] += _count(event.get("n") or 0)
        elif kind == ev.BPF_CONNECT and event.get("ok"):
            self.bpf_opens += 1
        elif kind == ev.BPF_CLOSE:
            self.bpf_closes += 1
        elif kind == ev.BPF_STATS:
            self.lost["bpf"] = int(event.get("dropped") or 0)

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


class StatusLine:
    """One line on stderr, rewritten in place, only when stderr is a terminal."""

    def __init__(self, tally, stream=None, interval_s=0.5):
        self.tally = tally
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
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
        line = "trace-quit %5.1fs | live %d | COM_QUIT %s | gc %d/%d/%d | lost %d" % (
            now - self.started, t.live, quits, gens["0"], gens["1"], gens["2"],
            t.lost["agent"] + t.lost["bpf"])
        self.stream.write("\r\x1b[2K" + line[:200])
        self.stream.flush()
        self._shown = True

    def clear(self):
        if self._shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._shown = False
