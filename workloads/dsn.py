"""DSNs for the workloads: the tracer's own parser (tracer/dsn.py), one spelling everywhere."""

from trace_quit.tracer.dsn import SCHEMES, parse, redact, sqlalchemy_url  # noqa: F401
