"""Attach to a running CPython: inject the agent for the time of a ``trace-quit --pid`` trace.

* ``target``: what a pid is (live, whose, which Python, free-threaded), its process tree;
* ``inject``: run the bootstrap inside it as a pending call, and read its answer (docs/attach.md);
* ``ptrace``: hold the main thread for the calls that map the page and queue the call;
* ``symbols``: the interpreter's and the C library's entry points in the process;
* ``deathwatch``: which signal the target died of, should it die while we are attached;
* ``recorder``: the Recorder on a running process (eBPF only), until it exits or we stop;
* ``session``: the one that also injects after the eBPF layer attached and detaches at the end;
* ``running``: the running process's command line and what the eBPF layer probes in it.

The agent side is tracer/agent/attach.py. ``trace-quit --pid`` runs the recorder ``recorder_for``
chooses, with the metrics exporter as one of its observers when asked.
"""

from trace_quit.tracer.attach.errors import AttachError, InjectError  # noqa: F401

DEFAULT_INJECT_TIMEOUT_S = 5.0


def check_pid(pid):
    """The Target for ``pid``, or AttachError (one line, a distinct exit code)."""
    from trace_quit.tracer.attach import target

    return target.check(pid)



def recorder_for(options, target, agent, inject_timeout, bpf_targets=None, on_note=None):
    """The Recorder for ``target``: with the agent injected when asked and its Python allows it
    (a note says why not), else eBPF only."""
    if agent and target.unsupported:
        on_note("no in-process agent for process %d: %s; tracing it with eBPF only" % (
            target.pid, target.unsupported))
    if not agent or target.unsupported:
        from trace_quit.tracer.attach.recorder import AttachedRecorder

        return AttachedRecorder(options, bpf_targets=bpf_targets, on_note=on_note)
    from trace_quit.tracer.attach.session import InjectingRecorder

    return InjectingRecorder(options, target, inject_timeout or DEFAULT_INJECT_TIMEOUT_S, bpf_targets=bpf_targets,
                             on_note=on_note)
