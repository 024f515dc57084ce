"""Prometheus metrics while ``trace-quit run`` runs: ``--metrics-port PORT`` (OpenMetrics).

The recorder hands every event to ``Exporter.observe`` (a deque append: the recorder's
threads never wait for us). A thread of ours moves them into an ``Attributor`` every
``TICK_S``; it joins what it holds (analysis/join.py) and gives each ended connection its
cause through analysis/attribute.py — the report's one cause contract, never re-decided here
— once its evidence is complete: every layer that runs has spoken (the agent's close or
destruction; the kernel's mysql_close entry and return), or ``SETTLE_S`` passed since the
first layer spoke (a lost event must not hold a count back forever), or the run is over.
Each connection is counted once; its events are then dropped, so memory follows the open
connections, not the run's length.

Labels: ``call_site`` is the create_engine() line of the connection's Engine, else the
program's frame that opened it (analysis/drops.Origins, as the report prints it). The first
``TOP_SITES`` distinct sites keep their own label, later ones are ``other`` (a series never
changes label, so counters stay monotonic). Sites are file:line in function — no SQL — and
go through the password redaction anyway.
"""

import collections
import json
import os
import threading
import time

from trace_quit.tracer import __version__
from trace_quit.tracer import events as ev
from trace_quit.tracer.records import typed
from trace_quit.tracer.metrics_http import MetricsError, MetricsServer  # noqa: F401 (MetricsError: the CLI's)
from trace_quit.tracer.terminal import escape

TICK_S = 0.5
SETTLE_S = 2.0
TOP_SITES = 20
#: An agent-only life (the kernel saw nothing of it) is forgotten this long after its last record.
CLAIM_FORGET_S = 3 * SETTLE_S
OTHER = "other"
MAX_LABEL = 200          # characters of a call_site label
MAX_GC_PIDS = 4096       # processes whose cumulative gc counts are kept (forged pids cannot grow it)
SOURCES = (ev.SRC_AGENT, ev.SRC_BPF, ev.SRC_SAMPLER, ev.SRC_TRACER)
#: Collection records kept for attribution: a close's collection is recent by construction (it
#: is attributed within SETTLE_S), and the kernel records every young collection, so keep few.
GC_WINDOW_NS = 10 * 10**9

_GC_KINDS = frozenset((ev.GC_START, ev.GC_STOP, ev.BPF_GC_START, ev.BPF_GC_DONE))
#: Kinds the join needs for attribution; everything else only feeds counters.
_JOIN_KINDS = frozenset((
    ev.AGENT_START, ev.CONN_OPEN, ev.CONN_FAIL, ev.CONN_CLOSE, ev.CONN_DESTROY, ev.ENGINE_CREATE,
    ev.ENGINE_DISPOSE, ev.ENGINE_DESTROY, ev.POOL, ev.BPF_CONNECT, ev.BPF_CLOSE, ev.BPF_CLOSE_RET,
    ev.BPF_WIRE, ev.BPF_PEER_END, ev.BPF_FORK, ev.BPF_EXIT, ev.BPF_FINALIZE, ev.CHILD_START,
    ev.BPF_SOCK_CONNECT, ev.BPF_SOCK_CLOSE, ev.BPF_PROBES)) | _GC_KINDS  # sockets: PyMySQL's kernel evidence


_SOCK_KINDS = frozenset((ev.BPF_SOCK_CONNECT, ev.BPF_SOCK_CLOSE))
#: The other kinds that name a connection (``conn``).
_CONN_KINDS = frozenset(k for k, (_, fields) in ev.KINDS.items()
                        if k not in _SOCK_KINDS and any(f.name == "conn" for f in fields))


def _sock_key(e):
    """A socket record's key (it has no conn on disk: pid and fd; a reused fd opens after the mark)."""
    return (e.pid, ("fd", e.fd))


def _conn_of(e):
    """The connection a record is about (a socket's: its pid-and-fd key), else None."""
    k = e.k
    if k in _SOCK_KINDS:
        return _sock_key(e)[1]
    return e.conn if k in _CONN_KINDS else None


class Attributor:
    """Incremental attribution: events in, (cause, generation, call_site) of each finished close out."""

    def __init__(self, header):
        self.header = header
        self.cwd = header.get("cwd")
        self.events = []
        self.opened_keys = set()
        self.sites = {}          # site -> label (first TOP_SITES distinct sites, then OTHER)
        self.pending = 0         # ended connections waiting for the rest of their evidence
        self.open = 0
        self.marks = {}          # (pid, conn) -> last event time of its counted life (_prune)
        self.claims = 0          # agent-only claims dropped uncounted (analysis/attribute.agent_only_claim)

    def add(self, events):
        # An event of a connection already counted (its (pid, conn), no later than the counted
        # life's last event) that arrives after the count is dropped: counted once, whatever the
        # arrival order. A reused conn value opens after that mark, so it is kept.
        self.events.extend(e for e in map(typed, events) if e.k in _JOIN_KINDS and not self._counted(e))

    def _counted(self, e):
        conn = _conn_of(e)
        if conn is None:
            return False
        mark = self.marks.get((e.pid, conn))
        return mark is not None and (e.t or 0) <= mark

    def label(self, site):
        if not site:
            return "unknown"
        label = self.sites.get(site)
        if label is None:
            if len(self.sites) < TOP_SITES:
                # The program chose this text: no password, no control character, bounded.
                label = escape(ev.redact(site))[:MAX_LABEL]
                self.sites[site] = label
            else:
                label = OTHER  # not remembered: forged sites cannot grow this table either
        return label

    def tick(self, now_ns, final=False):
        """Return (opened [call_site, ...], closes [(cause, generation, call_site), ...]) new since last tick."""
        from trace_quit.analysis import drops
        from trace_quit.analysis.attribute import End, agent_only_claim, count_families, decide
        from trace_quit.analysis.join import join
        from trace_quit.analysis.report import _layers, context

        j = join(self.events, self.header)
        layers = _layers(self.header, j)
        ctx = context(self.header, j, layers, finished=final, end_all=now_ns)
        origins = drops.Origins(self.cwd, j.thread_names)
        opened, closes, done = [], [], []
        pending = still_open = 0
        families = collections.OrderedDict()  # a server connection: its opener's life and fork copies
        for life in j.lives:
            if agent_only_claim(life, ctx):
                # The kernel has not seen it (yet: its records may come later): never counted
                # here, as in the report; forgotten once settled, so forged lines cannot pile
                # up (tests/security/test_forged_records.py).
                last = max(e.t for e in (life.agent_open, life.agent_end) if e is not None)
                if final or now_ns - last >= CLAIM_FORGET_S * 1e9:
                    self.claims += 1
                    done.append(life)
                continue
            if life.failed:
                if life.ended:
                    done.append(life)
                continue
            key = self._key(life)
            if life.opened and key not in self.opened_keys and not self._agent_open_due(life, layers, now_ns, final):
                self.opened_keys.add(key)
                opened.append(self._site(origins, life))
            families.setdefault(id(life.family), []).append(life)
        for members in families.values():
            ready = [lf for lf in members if final or (lf.ended and self._complete(lf, layers, now_ns)
                                                       and not self._forked_during(lf, j, now_ns))]
            pending += sum(1 for lf in members if lf.ended and lf not in ready)
            still_open += sum(1 for lf in members if not lf.ended and lf.opened and not final)
            if len(ready) < len(members):
                continue  # a fork family is counted whole, by the one rule (attribute.count_families)
            ends = [End(lf, decide(lf, ctx)) for lf in members]
            if len(ends) > 1:
                count_families(ends)
            for end in ends:
                if end.cause is None:
                    continue
                if end.copy_of is None:
                    closes.append((end.cause, end.generation, self._site(origins, end.life)))
                done.append(end.life)
                self.opened_keys.discard(self._key(end.life))
        self.pending, self.open = pending, still_open
        self._prune(done, now_ns)
        return opened, closes

    @staticmethod
    def _forked_during(life, j, now_ns):
        """True while a child forked during ``life`` may still end its copy of the connection: the
        family is counted once the child has exited (its copy is then in the join), or at the end
        (tests/unit/test_consumers.py: server-and-fork, a child forked just before its parent's close)."""
        for child, (parent, t, _) in j.forks.items():
            if parent != life.pid or (life.t_start is not None and t < life.t_start):
                continue
            if life.t_closed is not None and t > life.t_closed:
                continue
            end = j.exits.get(child)
            if end is None or now_ns - end < SETTLE_S * 1e9:
                return True
        return False

    @staticmethod
    def _key(life):
        return (life.pid, life.conn, life.t_start if life.t_start is not None else life.t_open)

    def _site(self, origins, life):
        return self.label(origins.engine_site(life) or origins.open_site(life))

    @staticmethod
    def _agent_open_due(life, layers, now_ns, final):
        """A socket the kernel saw open (PyMySQL) whose agent line is still on its way: counted
        once that line joins it (else it is opened twice, under two keys), or after SETTLE_S."""
        sock = life.bpf_open is not None and life.bpf_open.k in _SOCK_KINDS
        return (sock and layers.agent and life.agent_open is None and not final
                and now_ns - life.bpf_open.t < SETTLE_S * 1e9)

    @staticmethod
    def _complete(life, layers, now_ns):
        if life.t_closed is not None and now_ns - life.t_closed >= SETTLE_S * 1e9:
            return True
        # The agent's lines arrive in batches, after the kernel's for the same connection: a
        # close the kernel has finished still waits for the agent's open and end (up to
        # SETTLE_S), or they would make a second life, counted again
        # (tests/unit/test_metrics.py::test_agent_events_arriving_after_the_kernels_count_once).
        if layers.agent and (life.agent_open is None or life.agent_end is None):
            return False
        if layers.bpf and (life.bpf_end is None or life.bpf_ret is None):
            return False
        return True

    def _prune(self, done, now_ns):
        """Drop the events of counted connections, and collections older than GC_WINDOW_NS."""
        marks = {}
        for life in done:
            # (a socket's end, PyMySQL's, comes with a bpf_ret the join made, without a time)
            ts = [e.t for e in (life.agent_open, life.bpf_open, life.agent_end, life.bpf_end, life.bpf_ret)
                  if e is not None and type(e.t) is int]
            # A socket's records (PyMySQL) are keyed by pid and fd on disk (the join names them):
            # marked by those too, or they would make a kernel-only life of their own next tick.
            keys = {(life.pid, life.conn)} | {_sock_key(e) for e in (life.bpf_open, life.bpf_end)
                                              if e is not None and e.k in _SOCK_KINDS}
            for key in keys:
                marks[key] = max(ts + [marks.get(key, 0)])
        horizon = now_ns - GC_WINDOW_NS
        self.marks.update(marks)
        if len(self.marks) > 4096:  # a late event comes within the agent's flush period: forget old marks
            self.marks = {k: m for k, m in self.marks.items() if m >= horizon}
        kept = []
        for e in self.events:
            if e.k in _GC_KINDS and (e.t or 0) < horizon:
                continue
            conn = _conn_of(e)
            if conn is not None:
                mark = marks.get((e.pid, conn))
                if mark is not None and (e.t or 0) <= mark:
                    continue
            kept.append(e)
        self.events = kept


class Exporter:
    """The recorder's observer and the Prometheus collector, over one lock."""

    def __init__(self, header):
        self.attributor = Attributor(header)
        self._inbox = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.com_quit = collections.Counter()      # (cause, generation, call_site) -> n
        self.opened = collections.Counter()        # call_site -> n
        self.events_by_src = collections.Counter()
        self.gc_agent = {}                         # pid -> {gen: cumulative count}
        self.gc_bpf = collections.Counter()        # gen -> collections the kernel saw
        self.agent_lost = 0
        self.bpf_dropped = 0
        self.running = True
        self.finished_t = None
        self.scrapes = 0
        self.last_scrape = None
        self.tick_seconds = 0.0
        self.tick_errors = 0
        self.scrape_errors = 0
        self._thread = threading.Thread(target=self._loop, name="trace-quit-metrics", daemon=True)
        self._thread.start()

    # --- the recorder's side (any thread; never blocks, never raises) -----------------------
    def observe(self, event):
        self._inbox.append(event)

    def observe_text(self, text):
        self._inbox.append(text)

    def finish(self):
        """The program ended and every source is drained: attribute what remains, finally."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._tick(final=True)
        with self._lock:
            self.running = False
            self.finished_t = time.monotonic()

    # --- our thread ------------------------------------------------------------------------
    def _loop(self):
        while not self._stop.wait(TICK_S):
            try:
                self._tick(final=False)
            except Exception:  # a bug here must not stop the recording: the counters stall, and say so
                with self._lock:
                    self.tick_errors += 1

    def _drain_inbox(self):
        events = []
        while True:
            try:
                item = self._inbox.popleft()
            except IndexError:
                break
            if isinstance(item, str):
                for line in item.splitlines():
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(e, dict):
                        events.append(typed(e))
            elif isinstance(item, dict):
                events.append(typed(item))
        return events

    def _tick(self, final):
        t0 = time.monotonic()
        events = self._drain_inbox()
        for e in events:
            self._count(e)
        self.attributor.add(events)
        opened, closes = self.attributor.tick(ev.now_ns(), final=final)
        with self._lock:
            self.opened.update(opened)
            for cause, gen, site in closes:
                # Label values from closed sets: the report's causes, generations 0-2.
                cause = cause if cause in ev.CAUSES else ev.UNKNOWN
                gen = str(gen) if str(gen) in ev.GENERATIONS else ""
                self.com_quit[(cause, gen, site)] += 1
            self.tick_seconds = time.monotonic() - t0

    def _count(self, e):
        k = e.k
        src = e.src
        self.events_by_src[src if isinstance(src, str) and src in SOURCES else OTHER] += 1
        if k == ev.GC_COUNTS and isinstance(e.by_gen, dict):
            pid = e.pid
            if pid in self.gc_agent or len(self.gc_agent) < MAX_GC_PIDS:
                self.gc_agent[pid] = {g: n for g, n in e.by_gen.items() if g in ev.GENERATIONS and _count_ok(n)}
        elif k == ev.BPF_GC_DONE:
            gen = str(e.gen)
            if gen in ev.GENERATIONS:
                self.gc_bpf[gen] += 1
        elif k == ev.AGENT_LOST and _count_ok(e.n):
            self.agent_lost += e.n
        elif k == ev.BPF_STATS and _count_ok(e.dropped):
            self.bpf_dropped = max(self.bpf_dropped, e.dropped)

    # --- the collector (prometheus_client calls these at each scrape) ------------------------
    def describe(self):
        return []

    def collect(self):
        """Every family, each built on its own: one that fails is left out of this scrape (and
        counted in trace_quit_scrape_errors), never the whole answer (a forged line once made
        every scrape an HTTP 500 for the rest of the run)."""
        with self._lock:
            self.scrapes += 1
            self.last_scrape = time.monotonic()
            for build in (self._quits, self._opened, self._gc, self._lost, self._health):
                try:
                    families = list(build())
                except Exception:
                    self.scrape_errors += 1
                    continue
                for family in families:
                    yield family

    def _quits(self):
        from prometheus_client.core import CounterMetricFamily

        quit_ = CounterMetricFamily("trace_quit_com_quit", "COM_QUITs (connection ends) by cause, as the report "
                                    "attributes them", labels=["cause", "generation", "call_site"])
        for (cause, gen, site), n in sorted(self.com_quit.items()):
            quit_.add_metric([cause, gen, site], _value(n))
        yield quit_

    def _opened(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        opened = CounterMetricFamily("trace_quit_connections_opened", "MySQL connections opened",
                                     labels=["call_site"])
        for site, n in sorted(self.opened.items()):
            opened.add_metric([site], _value(n))
        yield opened
        yield GaugeMetricFamily("trace_quit_connections_open", "MySQL connections open now",
                                value=_value(self.attributor.open))

    def _gc(self):
        from prometheus_client.core import CounterMetricFamily

        gcs = CounterMetricFamily("trace_quit_gc_collections", "garbage collections of the traced program",
                                  labels=["generation"])
        by_gen = collections.Counter()
        if self.gc_agent:
            for counts in self.gc_agent.values():
                by_gen.update(counts)
        else:
            by_gen.update(self.gc_bpf)
        for gen in ev.GENERATIONS:
            if gen in by_gen:
                gcs.add_metric([gen], _value(by_gen[gen]))
        yield gcs

    def _lost(self):
        from prometheus_client.core import CounterMetricFamily

        lost = CounterMetricFamily("trace_quit_lost_events", "events lost on the way to the tracer",
                                   labels=["source"])
        lost.add_metric([ev.SRC_AGENT], _value(self.agent_lost))
        lost.add_metric([ev.SRC_BPF], _value(self.bpf_dropped))
        yield lost

    def _health(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        events = CounterMetricFamily("trace_quit_events", "events the tracer received", labels=["source"])
        for src, n in sorted(self.events_by_src.items()):
            events.add_metric([src], _value(n))
        yield events
        yield GaugeMetricFamily("trace_quit_program_running", "1 while the traced program runs",
                                value=1 if self.running else 0)
        yield GaugeMetricFamily("trace_quit_attribution_pending", "ended connections waiting for the rest "
                                "of their evidence", value=_value(self.attributor.pending))
        yield GaugeMetricFamily("trace_quit_attribution_tick_seconds", "duration of the last attribution pass",
                                value=_value(self.tick_seconds))
        yield CounterMetricFamily("trace_quit_attribution_errors", "attribution passes that failed (a bug: "
                                  "the counters stall)", value=_value(self.tick_errors))
        yield CounterMetricFamily("trace_quit_agent_only_claims", "connection records only the agent's channel "
                                  "reported, the kernel never saw: not counted", value=_value(self.attributor.claims))
        yield CounterMetricFamily("trace_quit_scrape_errors", "metric families left out of a scrape because "
                                  "they failed to build", value=_value(self.scrape_errors))
        info = GaugeMetricFamily("trace_quit_tracer_info", "the tracer serving these metrics",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def scraped_since_finish(self):
        with self._lock:
            return self.finished_t is not None and self.last_scrape is not None and self.last_scrape > self.finished_t


def serve(header, addr, port):
    """Start the exporter and its endpoint; ``MetricsError`` says why not in one line."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MetricsError("--metrics-port needs the prometheus_client package: pip install prometheus_client "
                           "(or re-run scripts/setup.sh)") from None
    exporter = Exporter(header)
    try:
        return MetricsServer(exporter, addr, port)
    except MetricsError:
        exporter._stop.set()
        raise


def _count_ok(n):
    return type(n) is int and 0 <= n < 1 << 62


def _value(n):
    """A sample value the exposition can always print: a finite, non-negative number."""
    if type(n) not in (int, float) or n != n or n < 0:
        return 0
    return min(n, 1 << 62)


def header_for(options, attached_pid=None):
    """What the attribution needs of the capture's header, known before the run starts: the same
    keys as the header tracer/record.py writes (a replay of the capture decides as this run did:
    tests/unit/test_consumers.py, the attach fixture)."""
    header = {"cwd": options.cwd or os.getcwd(), "layers": {"bpf": bool(options.bpf), "agent": bool(options.agent)}}
    if attached_pid is not None:
        header["attached_pid"] = attached_pid
    return header
