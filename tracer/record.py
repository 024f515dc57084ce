"""Record one traced run: cork the child, attach, release, stream every source into the capture.

Order matters and is the point of this module:
fork (corked) → create capture → attach eBPF by path, seeded with the child's pid →
header → reader threads → release (exec) → wait → drain the agent and the ring buffer →
detach → trailer. Nothing captured is lost on the way out: every exit path closes the
capture with a trailer, and the flusher writes at least every 100 ms before that.
"""

import contextlib
import dataclasses
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from typing import Callable, List, Optional

from trace_quit.tracer import __version__, agent
from trace_quit.tracer import events as ev
from trace_quit.tracer.capture import CaptureWriter
from trace_quit.tracer.channel import AgentChannel
from trace_quit.tracer.errors import OutputError
from trace_quit.tracer.launch import CorkedChild, RunAs
from trace_quit.tracer.program import missing_agent_reason
from trace_quit.tracer.signals import (SIGNAL_WINDOW_NS, STOP_SIGNALS, Interrupted, signal_name, signals_blocked,
                                       terminal_sent_to_group)
from trace_quit.tracer.status import StatusLine, Tally

POLL_INTERVAL_S = 0.02   # ring buffer drain period (BPF_RB_NO_WAKEUP: we poll, it never wakes us)


@dataclasses.dataclass
class RunOptions:
    """What ``trace-quit run`` was asked to do."""

    argv: List[str]
    output: str
    force: bool = False
    bpf: bool = True
    agent: bool = True
    dsn: Optional[str] = None
    sample_user: Optional[str] = None
    run_as: Optional[RunAs] = None
    status: bool = True
    duration: Optional[float] = None   # --pid: stop tracing after this many seconds
    max_capture: int = 0               # --max-capture: the capture's bound in bytes (0: none)
    cwd: Optional[str] = None          # where the user stood: the program runs there (default: ours)


@dataclasses.dataclass
class RunResult:
    """How the run ended."""

    exit_status: int
    capture: str
    run_as: RunAs
    tally: Tally
    lost: dict
    notes: List[str]
    started: bool = True
    interrupted: Optional[int] = None   # the signal that stopped the start-up (program not run)
    capture_error: Optional[str] = None  # what could not be written (the disk filled up), else None


class Recorder:
    """Runs the program under every requested layer and writes the capture."""

    def __init__(self, options: RunOptions, bpf_targets=None, on_note: Callable[[str], None] = None):
        self.options = options
        #: where the user stood: the program runs there and the capture is named from there
        self.cwd = options.cwd or os.getcwd()
        self.bpf_targets = bpf_targets
        self.tally = Tally()
        self.notes: List[str] = []
        self.on_note = on_note or (lambda text: None)
        self.writer: Optional[CaptureWriter] = None
        self.channel: Optional[AgentChannel] = None
        self.bpf = None
        self.signals = []   # the stop signals the tracer got while the program ran (the trailer's)
        self.sampler = None
        self.child: Optional[CorkedChild] = None
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._emit_lock = threading.Lock()
        self.timings = {}
        self.started = False
        self.interrupted: Optional[int] = None
        self.agent_missing = {}   # pid -> why the agent did not load there
        # Each sees every event too (observe(event), observe_text(lines), finish()): tracer/metrics.py.
        self.observers: List = []
        self.t_started_ns = None   # the report's time origin (child_start), for the bound's note

    # --- events from every source pass through here ------------------------------
    def emit(self, event):
        with self._emit_lock:
            self.tally.add(event)
        self.writer.emit(event)
        for observer in self.observers:
            observer.observe(event)

    def emit_text(self, text, counts, connects_ok):
        """A batch of eBPF events already encoded as capture lines (BpfSession's fast path)."""
        with self._emit_lock:
            self.tally.add_counts(counts, connects_ok)
        self.writer.emit_text(text, counts)
        for observer in self.observers:
            observer.observe_text(text)

    def _new_writer(self, run_as):
        opts = self.options
        # Named from where the user stood, whatever our working directory is by now.
        path = os.path.join(self.cwd, opts.output)
        return CaptureWriter(path, force=opts.force, owner=(run_as.uid, run_as.gid),
                             max_bytes=opts.max_capture, on_bound=self._bound_reached)

    def _capture_path(self):
        """The capture as the user named it, or where it really is if that name now points elsewhere."""
        name = self.options.output
        real = getattr(self.writer, "real_path", None)
        if real and os.path.realpath(os.path.join(self.cwd, name)) != os.path.realpath(real):
            return real
        return name

    def _bound_reached(self, t_ns, max_bytes):
        """The capture reached --max-capture: said once, in the capture and on stderr."""
        from trace_quit.tracer.capture import format_size

        since = (t_ns - self.t_started_ns) / 1e9 if self.t_started_ns is not None else 0.0
        self.note("capture reached its %s bound at +%.1fs; from now on events are counted, not written "
                  "(--max-capture)" % (format_size(max_bytes), since), level="info")

    def note(self, text, level="warning"):
        self.notes.append(text)
        self.on_note(text)
        if self.writer is not None:
            self.writer.emit({"k": ev.TRACER_NOTE, "t": ev.now_ns(), "src": ev.SRC_TRACER,
                              "level": level, "text": text})

    # --- the run -------------------------------------------------------------------
    def run(self) -> RunResult:
        # SIGINT/SIGTERM/SIGHUP are ours from the first instruction: before the program is
        # released they only stop the start-up (it is never run, the trailer says so, the
        # FIFO goes); after, they are forwarded to it (tests/system/test_trust.py::
        # test_a_signal_while_attaching_never_starts_the_program).
        previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            return self._run()
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame):
        if self.started:
            self._forward_signal(signum, frame)
        elif self.interrupted is None:
            self.interrupted = signum  # acted on at the next checkpoint: nothing is torn mid-way

    def _checkpoint(self):
        """Stop the start-up here if a signal came in (the program has not run)."""
        if self.interrupted is not None and not self.started:
            raise Interrupted(self.interrupted)

    def _run(self) -> RunResult:
        opts = self.options
        run_as = opts.run_as or RunAs.invoking_user()
        t0 = time.monotonic()
        exit_status = None
        try:
            env = dict(os.environ)
            if opts.agent:
                self.channel = AgentChannel(run_as.uid, run_as.gid)
                env = agent.child_env(env, self.channel.path)
            if not run_as.is_current:
                env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
                for key in ("SUDO_COMMAND", "SUDO_USER", "SUDO_UID", "SUDO_GID", "MAIL"):
                    env.pop(key, None)
            self._checkpoint()
            self.child = CorkedChild(opts.argv, env, run_as, cwd=self.cwd)
            with signals_blocked():  # a pid, and a cork to pull, exist together or not at all
                self.child.spawn()  # before any thread exists: fork is safe
            self.writer = self._new_writer(run_as)
            try:
                self.writer.write_header(self._header(run_as))
            except OSError as exc:  # before the program runs: one line, the program not started
                raise OutputError("cannot write the capture %s: %s" % (opts.output, exc.strerror or exc)) from None
            self._checkpoint()
            if opts.bpf:
                self._attach_bpf(self.child.pid)
            self._start_threads()
            self.timings["startup_s"] = round(time.monotonic() - t0, 3)
            with signals_blocked():  # the last check and the release are one step
                self._checkpoint()
                self.t_started_ns = ev.now_ns()
                self.writer.emit({"k": ev.CHILD_START, "t": self.t_started_ns, "src": ev.SRC_TRACER,
                                  "pid": self.child.pid, **self.timings})
                self.child.release()
                self.started = True
            if self.interrupted is not None:
                # Another thread took the signal and the handler ran after the last check
                # (blocking it in this thread does not hold Python's handler): the program
                # was released, so it gets the signal now rather than never.
                self.child.signal(self.interrupted)
            exit_status = self.child.wait()
            self.writer.emit({"k": ev.CHILD_EXIT, "t": ev.now_ns(), "src": ev.SRC_TRACER,
                              "pid": self.child.pid, "status": exit_status})
        except Interrupted as exc:
            exit_status = 128 + exc.signum
            self.note("%s while starting: the program was not run" % signal_name(exc.signum))
        finally:
            if self.child is not None and self.child.status is None and self.child._cork_w is not None:
                self.child.abandon()
            self._finish(exit_status)
        return RunResult(exit_status=exit_status, capture=self._capture_path(), run_as=run_as, tally=self.tally,
                         lost=dict(self.tally.lost), notes=self.notes, started=self.started,
                         interrupted=self.interrupted if not self.started else None,
                         capture_error=self.writer.failure() if self.writer is not None else None)

    def _attach_bpf(self, root_pid):
        """Compile the probes (their compiler's chatter kept off the terminal) and attach them."""
        from trace_quit.tracer import bpf  # only this layer imports bcc

        t_attach = time.monotonic()
        with _stderr_captured() as compile_output:
            try:
                self.bpf = bpf.BpfSession(self.bpf_targets, self.emit, emit_text=self.emit_text)
            except bpf.BpfUnavailable as exc:
                raise bpf.BpfUnavailable(_with_compile_hint(str(exc), compile_output())) from None
        self._checkpoint()
        self.bpf.attach(root_pid)
        self._checkpoint()
        self.timings["attach_s"] = round(time.monotonic() - t_attach, 3)
        self.writer.emit({"k": ev.BPF_PROBES, "t": ev.now_ns(), "src": ev.SRC_TRACER,
                          **_redacted(self.bpf.describe())})
        for note in getattr(self.bpf_targets, "notes", None) or []:
            self.note(note, level="info")
        for item in getattr(self.bpf_targets, "missing", None) or []:
            self.note("eBPF: no %s: %s" % (item.get("what"), item.get("why")))

    def _note_missing_agent(self):
        """Say, with the reason when the command line shows it, that the program ran without the agent."""
        reason = missing_agent_reason(list(self.options.argv), loaded_elsewhere=bool(self.tally.agent_pids))
        if reason is None:
            return
        self.agent_missing[self.child.pid] = reason
        self.note("the agent did not load in pid %d: %s%s" % (
            self.child.pid, reason,
            "" if not self.tally.agent_pids else
            " (it did in pid %s)" % ", ".join(str(p) for p in sorted(self.tally.agent_pids, key=str))))

    def _header(self, run_as, pid=None):
        opts = self.options
        header = {
            "argv": ev.redact_argv(list(opts.argv)),
            "tracer": {"version": __version__, "pid": os.getpid(), "python": platform.python_version(),
                       "argv": ev.redact_argv(list(sys.argv))},
            "child_pid": pid if pid is not None else self.child.pid,
            "uid": run_as.uid, "gid": run_as.gid, "user": run_as.name,
            "cwd": self.cwd,
            # Layers requested; what the eBPF layer attached follows in the bpf_probes event.
            "layers": {"bpf": bool(opts.bpf), "agent": self.channel is not None, "sampler": bool(opts.dsn)},
        }
        if pid is not None:
            header["attached_pid"] = pid
        if self.bpf_targets is not None:
            # The files the program will load and their versions, resolved before it ran.
            try:
                header["targets"] = _redacted(self.bpf_targets.describe())
            except Exception as exc:
                header["targets"] = {"error": str(exc)}
        if opts.dsn:
            from trace_quit.tracer import dsn as dsnlib

            header["dsn"] = dsnlib.redact(opts.dsn)
        return header

    def _start_threads(self):
        status = StatusLine(self.tally) if self.options.status else None
        if self.channel is not None:
            self._spawn_thread("agent", self._agent_loop)
        if self.bpf is not None:
            self._spawn_thread("bpf", self._bpf_loop)
        if self.options.dsn:
            self._start_sampler()
        if status is not None and status.enabled:
            self._status = status
            self._spawn_thread("status", self._status_loop)

    def _spawn_thread(self, name, target):
        thread = threading.Thread(target=target, name="trace-quit-" + name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _agent_loop(self):
        # A timer, not select(): waking on every write would make the tracer compete with the
        # program for the CPU once per connection event; the 1 MiB FIFO holds a period's lines.
        while not self._stop.wait(POLL_INTERVAL_S):
            try:
                self._drain_agent()
            except Exception as exc:  # nothing the program writes may stop this thread
                self.note("agent channel: %s (reading goes on)" % exc)

    def _drain_agent(self):
        for event in self.channel.read_events():
            try:
                with self._emit_lock:
                    self.tally.add(event)
            except Exception as exc:  # valid by its schema, yet unusable: rejected, not fatal
                self.channel.reject(event, "%s: %s" % (event.get("k"), exc))
                continue
            self.writer.emit(event)
            # The observers (tracer/metrics.py) see the agent's events too
            # (tests/system/test_metrics_prometheus.py, agent layer alone).
            for observer in self.observers:
                observer.observe(event)

    def _bpf_loop(self):
        while not self._stop.wait(POLL_INTERVAL_S):
            try:
                self.bpf.poll()
            except Exception as exc:  # a decoding bug must not stop the run; say it once
                self.note("eBPF polling failed: %s" % exc)
                return

    def _status_loop(self):
        while not self._stop.wait(0.25):
            self._status.maybe_show()
        self._status.clear()

    def _start_sampler(self):
        try:
            from trace_quit.tracer import sampler as sampler_mod

            def sink(t_ns, count):
                event = {"k": ev.SERVER_COUNT, "t": t_ns, "src": ev.SRC_SAMPLER, "count": count}
                if self.sampler.scope == "own":  # no PROCESS: what the count covers (tracer/sampler.py)
                    event["own_user"] = self.sampler.user
                self.emit(event)

            def status_sink(t_ns, status):  # Aborted_clients at start and end (issue 19)
                self.emit(dict(status, k=ev.SERVER_STATUS, t=t_ns, src=ev.SRC_SAMPLER))

            # Its first error is said at once (a wrong password gives no samples at all), and
            # again in the report (tests/integration/test_trust_sampler.py).
            self.sampler = sampler_mod.Sampler(
                self.options.dsn, sink, user=self.options.sample_user,
                on_first_error=lambda text: self.note("server sampler: %s" % text), status_sink=status_sink,
                on_scope=lambda text: self.note("server sampler: %s" % text, level="info"))
            self.sampler.start()
        except Exception as exc:
            self.note("server sampler not started: %s" % exc)

    def _forward_signal(self, signum, frame):
        # A signal sent to the process group (a Ctrl-C typed at the terminal, `kill -INT -PGID`)
        # already reached the child; forwarding it again would interrupt the program twice
        # (uvicorn force-exits on a second SIGINT). The kernel layer saw whether the child got
        # it from someone else (tests/system/test_cli_run.py::test_a_sigint_reaches_the_program_once);
        # without it, the terminal case is still recognised.
        self.signals.append({"signal": signum, "name": signal_name(signum), "forwarded": False})
        if signum == signal.SIGINT and terminal_sent_to_group():
            return
        if self.bpf is not None and self.child is not None and self.child.pid:
            since = time.monotonic_ns() - SIGNAL_WINDOW_NS
            for _ in range(3):   # the group's kill() may still be going through its members
                if self.bpf.signal_reached(self.child.pid, signum, since):
                    return
                time.sleep(0.002)
        self.signals[-1]["forwarded"] = True
        self.child.signal(signum)

    def _finish(self, exit_status):
        """Drain every source, detach, write the trailer. Runs on every exit path."""
        if self.writer is None:
            if self.channel is not None:
                self.channel.close()
            return
        # The agent's last lines are already in the FIFO when the child has exited (it writes
        # synchronously during finalisation); the drain below, after the threads stop, reads them.
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        if self.sampler is not None:
            try:
                self.sampler.stop()
                if not self.sampler.samples:
                    self.note("server sampler: no samples%s" % (
                        " (first error: %s)" % self.sampler.first_error if self.sampler.first_error else ""))
            except Exception:
                pass
        if self.channel is not None:
            try:
                self._drain_agent()
            except Exception as exc:
                self.note("agent channel: %s" % exc)
            if self.channel.invalid_lines:
                self.note(self.channel.rejected_note())
            if self.started and self.child is not None and self.child.pid not in self.tally.agent_pids:
                self._note_missing_agent()
        lost_bpf = 0
        if self.bpf is not None:
            try:
                self.bpf.poll()
                t_detach = time.monotonic()
                # Final poll inside; then the perf fds go to a detached grandchild to close:
                # the kernel tears uprobes down one at a time (~0.11 s each, serialised), and
                # the program's status and report need not wait for that (~1 s).
                self.bpf.detach(wait=False)
                self.timings["detach_s"] = round(time.monotonic() - t_detach, 3)
                stats = self.bpf.stats()
                lost_bpf = int(stats.get("dropped", 0))
                self.emit({"k": ev.BPF_STATS, "t": ev.now_ns(), "src": ev.SRC_BPF, **stats})
            except Exception as exc:
                self.note("eBPF detach failed: %s" % exc)
        if self.channel is not None:
            self.channel.close()
        for observer in self.observers:
            observer.finish()
        trailer = {"exit_status": exit_status, "program_started": self.started,
                   "lost": {"agent": self.tally.lost["agent"], "bpf": lost_bpf},
                   "timings": dict(self.timings)}
        if self.signals:   # stop signals while the program ran, and whether we forwarded each
            trailer["signals"] = list(self.signals)
        if self.interrupted is not None and not self.started:
            trailer["interrupted"] = {"signal": self.interrupted, "name": signal_name(self.interrupted),
                                      "program_started": False}
        if self.channel is not None:
            trailer["rejected"] = self.channel.rejected_summary()
            # Per process, from evidence: where the agent said agent_start, and where it did not and why.
            trailer["agent"] = {"loaded_in": sorted(p for p in self.tally.agent_pids if isinstance(p, int)),
                                "missing": {str(pid): why for pid, why in self.agent_missing.items()}}
        self.writer.close(trailer)


@contextlib.contextmanager
def _stderr_captured():
    """Send fd 2 to a temporary file (bcc's compiler writes there from C); yield its reader."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)

        def output():
            tmp.seek(0)
            return tmp.read().decode("utf-8", "replace")

        try:
            yield output
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _with_compile_hint(message, output):
    """Name the usual reason a compile fails here: no kernel headers where bcc looks."""
    source = os.environ.get("BCC_KERNEL_SOURCE") or "/lib/modules/%s/build" % platform.release()
    if not os.path.isdir(source) or "chdir(" in output:
        return ("bcc found no kernel headers at %s: run scripts/setup.sh (it installs them or applies the "
                "headers fallback), or use --no-bpf" % source)
    last = [line for line in output.strip().splitlines() if line.strip()][-1:] or [""]
    return message + ((" — " + last[0][:200]) if last[0] else "")


def _redacted(value):
    """``value`` with every ``argv`` list in it redacted (descriptions may carry the command line)."""
    if isinstance(value, dict):
        return {k: ev.redact_argv(v) if k == "argv" and isinstance(v, list) else _redacted(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, str):
        return ev.redact(value)
    return value
