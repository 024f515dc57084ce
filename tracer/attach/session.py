"""``trace-quit --pid``: the eBPF layer plus the agent injected into every Python of the process tree.

Order: the eBPF probes attach first (recorder.py ``run_attached``), the time origin is
written, then the agent is injected into the root and each existing child (a gunicorn
master's workers); workers forked later inherit it (``os.register_at_fork``) and the kernel
layer follows their fork. At the end, before the channel is drained for the last time, a
second injection stops the agent in every process that may have it.
"""

import ctypes
import time

from trace_quit.tracer import events as ev
from trace_quit.tracer.attach import deathwatch
from trace_quit.tracer.attach import target as targets_mod
from trace_quit.tracer.attach.errors import InjectError, TargetDied
from trace_quit.tracer.attach.inject import inject
from trace_quit.tracer.attach.recorder import AttachedRecorder
from trace_quit.tracer.channel import AgentChannel


class InjectingRecorder(AttachedRecorder):
    """An AttachedRecorder whose Pythons get the agent for the time of the trace."""

    def __init__(self, options, target, inject_timeout, bpf_targets=None, on_note=None):
        super().__init__(options, bpf_targets=bpf_targets, on_note=on_note)
        self.target = target
        self.inject_timeout = inject_timeout
        self.injected = {}  # pid -> Target that answered "started"
        self.died = {}      # pid -> how it ended while we were attached ("died of SIGSEGV during injection")
        # The program writes into this FIFO, so the FIFO (not its directory) is the program user's.
        self.channel = AgentChannel(target.uid, target.gid)

    def _trace_existing_children(self, root_pid):
        """The kernel follows forks from now on; the workers that exist already are added here."""
        session = getattr(self.bpf, "_bpf", None)
        if session is None:
            return
        children = targets_mod.descendants(root_pid)
        try:
            with self.bpf._lock:
                words = session[b"traced"]  # one bit per tgid (tracer/bpf/probes.c)
                for pid in children:
                    idx = ctypes.c_int(pid >> 6)
                    words[idx] = ctypes.c_uint64(words[idx].value | (1 << (pid & 63)))
        except Exception as exc:
            self.note("eBPF: the existing child processes could not be added: %s" % exc)
            return
        if children:
            self.note("eBPF: tracing %d existing child process(es) of %d too: %s"
                      % (len(children), root_pid, " ".join(map(str, children))), level="info")

    def _attach_bpf(self, root_pid):
        deathwatch.watch(root_pid)  # which signal, should it die while we are attached
        super()._attach_bpf(root_pid)
        self._trace_existing_children(root_pid)

    def _attached_started(self, pid):
        for target in targets_mod.same_python_tree(self.target):
            if target.pid in self.died:
                continue
            self._inject_start(target)

    def _target_ended(self, pid):
        """The attached process is gone: say how (the signal), once, in the capture too (a warning:
        the report lists it). Its exit status as a shell gives it (128 + signal), else None."""
        if pid not in self.died:
            how = "process %d %s while trace-quit was attached" % (pid, deathwatch.how_it_died(pid))
            self.died[pid] = how
            self.note(how)
        sig = deathwatch.fatal_signal(pid)
        return 128 + sig if sig else None

    def _inject_start(self, target):
        try:
            status = inject(target, "start", self.channel.path, self.inject_timeout)
        except TargetDied as exc:
            self.died[target.pid] = str(exc)
            self.note("%s; the eBPF layer recorded up to its end" % exc)
            return
        except InjectError as exc:
            self.note("agent not injected into process %d (%s): %s; the eBPF layer carries on alone"
                      % (target.pid, target.label, exc))
            return
        self.injected[target.pid] = target
        info = status.get("inject", {})
        self.writer.emit({"k": ev.TRACER_NOTE, "t": ev.now_ns(), "src": ev.SRC_TRACER, "level": "info",
                          "text": "agent injected into process %d (%s): %d connection(s) and %d Engine(s) were "
                                  "open before attach" % (target.pid, target.label, _count(status.get("connections")),
                                                          _count(status.get("engines"))),
                          "attach": {"pid": target.pid, "method": info.get("method"),
                                     "stopped_s": info.get("stopped_s"), "waited_s": info.get("waited_s"),
                                     "call_s": info.get("call_s"), "total_s": info.get("total_s")}})

    def _finish(self, exit_status):
        if self.writer is not None:
            self.detach_agents()
        super()._finish(exit_status)

    def detach_agents(self):
        """Stop the agent in every process that may have it: those we injected and their children."""
        t0 = time.monotonic()
        pids = set(self.injected)
        root = self.injected.get(self.target.pid)
        if root is not None:
            pids.update(targets_mod.descendants(root.pid))  # workers forked since inherited the agent
        for pid in sorted(pids):
            try:
                target = self.injected.get(pid) or targets_mod.check(pid)
            except Exception:
                continue
            if targets_mod.proc_state(pid) in (None, "Z", "X") or pid in self.died:
                continue
            try:
                inject(target, "stop", self.channel.path, self.inject_timeout)
            except TargetDied as exc:
                self.died[pid] = str(exc)
                self.note(str(exc))
            except InjectError as exc:
                self.note("agent in process %d not stopped: %s (it goes quiet when the channel closes)"
                          % (pid, exc))
        self.timings["agent_detach_s"] = round(time.monotonic() - t0, 3)
        deathwatch.unwatch(self.target.pid)


def _count(value):
    """A count from the bootstrap's answer, which the program could have forged: an int or 0."""
    return value if type(value) is int and 0 <= value < 10 ** 9 else 0
