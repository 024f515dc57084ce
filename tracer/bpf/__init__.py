"""The eBPF layer: resolve the traced command's files, attach uprobes by path, stream events.

    from trace_quit.tracer.bpf import resolve_targets, BpfSession, BpfUnavailable

Importing this package does not import bcc: ``BpfSession`` does, when it compiles.
"""

from trace_quit.tracer.bpf.errors import BpfUnavailable
from trace_quit.tracer.bpf.resolve import ProbeSite, Targets, resolve_targets

__all__ = ["BpfSession", "BpfUnavailable", "ProbeSite", "Targets", "resolve_targets"]


def __getattr__(name):
    # BpfSession lives in session.py; import it on first use (PEP 562).
    if name == "BpfSession":
        from trace_quit.tracer.bpf.session import BpfSession

        return BpfSession
    raise AttributeError(name)
