"""Attach to a running CPython: inject the agent for the time of a ``trace-quit --pid`` trace.

* ``target``: what a pid is (live, whose, which Python, free-threaded), its process tree;
* ``inject``: run the bootstrap inside it (gdb on 3.8-3.13, ``sys.remote_exec`` on 3.14+);
* ``symbols``: the interpreter's entry points in the process, so gdb reads no symbols;
* ``session``: the Recorder that injects after the eBPF layer attached and detaches at the end;
* ``gdb_script.py``: runs inside gdb, never imported.

The agent side is tracer/agent/attach.py. ``trace-quit --pid`` runs an ``AttachRecorder``
(session.py), with the metrics exporter as one of its observers when asked.
"""

from trace_quit.tracer.attach.errors import AttachError, InjectError  # noqa: F401

DEFAULT_INJECT_TIMEOUT_S = 5.0


def check_pid(pid):
    """The Target for ``pid``, or AttachError (one line, a distinct exit code)."""
    from trace_quit.tracer.attach import target

    return target.check(pid)

