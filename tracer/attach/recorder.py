"""``trace-quit --pid``: the eBPF layer on a running process, until it exits, --duration or a stop signal.

The Recorder's sources, writer and trailer (tracer/record.py), started on a pid trace-quit did
not start: no cork, no child to wait for. Alone it traces with eBPF only (``--no-agent``, or a
Python the agent cannot be injected into); session.py's ``InjectingRecorder`` adds the agent
through the two hooks below.
"""

import os
import signal
import threading
import time

from trace_quit.tracer import events as ev
from trace_quit.tracer.errors import OutputError
from trace_quit.tracer.launch import RunAs
from trace_quit.tracer.record import Recorder, RunResult
from trace_quit.tracer.signals import STOP_SIGNALS


class AttachedRecorder(Recorder):
    """A Recorder for a process that is already running (eBPF only unless a subclass injects)."""

    def run_attached(self, pid) -> RunResult:
        """Trace an already running process (eBPF only) until it exits or we are interrupted."""
        opts = self.options
        run_as = opts.run_as or RunAs.invoking_user()
        t0 = time.monotonic()
        stop = threading.Event()
        # Ours from the first instruction here too: a stop signal while attaching ends the
        # session after the attach step, with a trailer, instead of killing the tracer.
        previous_handlers = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in STOP_SIGNALS}
        status = None
        try:
            self.writer = self._new_writer(run_as)
            try:
                self.writer.write_header(self._header(run_as, pid=pid))
            except OSError as exc:
                raise OutputError("cannot write the capture %s: %s" % (opts.output, exc.strerror or exc)) from None
            if self.channel is None:  # session.py gives it a channel when it injects the agent
                self.note("attached to running process %d: no in-process agent, so causes come from the kernel "
                          "alone and connections opened before now are reported as opened before the capture" % pid,
                          level="info")
            self._attach_bpf(pid)
            self._start_threads()
            self.timings["startup_s"] = round(time.monotonic() - t0, 3)
            # The report's time origin: tracing starts now (the program started earlier).
            self.t_started_ns = ev.now_ns()
            self.writer.emit({"k": ev.CHILD_START, "t": self.t_started_ns, "src": ev.SRC_TRACER, "pid": pid,
                              "attached": True, **self.timings})
            t_started = time.monotonic()
            self._attached_started(pid)
            while not stop.wait(0.1):
                if opts.duration is not None and time.monotonic() - t_started >= opts.duration:
                    break
                if not _alive(pid):
                    self.writer.emit({"k": ev.CHILD_EXIT, "t": ev.now_ns(), "src": ev.SRC_TRACER, "pid": pid,
                                      "status": self._target_ended(pid), "attached": True})
                    break
            status = 0
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self._finish(None)
        return RunResult(exit_status=status, capture=self._capture_path(), run_as=run_as, tally=self.tally,
                         lost=dict(self.tally.lost), notes=self.notes,
                         capture_error=self.writer.failure() if self.writer is not None else None)

    def _attached_started(self, pid):
        """Tracing has started (the time origin is written): session.py injects the agent here."""

    def _target_ended(self, pid):
        """The attached process is gone: session.py says how (the signal) in a note and returns
        128 + the signal when it died of one (a shell's exit status); here None (unknown)."""
        return None


def _alive(pid):
    """Is ``pid`` still running (a zombie has ended)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: its status is its parent's to collect, not ours
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
