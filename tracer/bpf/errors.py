"""The one error the eBPF layer raises to its callers."""


class BpfUnavailable(Exception):
    """eBPF tracing cannot be used for this run; ``str(e)`` is one sentence with the fix."""
