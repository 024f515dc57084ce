"""Attach to a running CPython: inject the agent for the time of a ``trace-quit --pid`` trace.

* ``target``: what a pid is (live, whose, which Python, free-threaded), its process tree;
* ``inject``: run the bootstrap inside it as a pending call, and read its answer (docs/attach.md);
* ``ptrace``: hold the main thread for the calls that map the page and queue the call;
* ``symbols``: the interpreter's and the C library's entry points in the process;
* ``deathwatch``: which signal the target died of, should it die while we are attached;
* ``session``: the Recorder that injects after the eBPF layer attached and detaches at the end;

The agent side is tracer/agent/attach.py. ``trace-quit --pid`` runs an ``AttachRecorder``
(session.py), with the metrics exporter as one of its observers when asked.
"""

from trace_quit.tracer.attach.errors import AttachError, InjectError  # noqa: F401

DEFAULT_INJECT_TIMEOUT_S = 5.0


def check_pid(pid):
    """The Target for ``pid``, or AttachError (one line, a distinct exit code)."""
    from trace_quit.tracer.attach import target

    return target.check(pid)

