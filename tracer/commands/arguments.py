"""The values ``trace-quit run`` options take: durations, seconds and sizes (argparse types).

Each refuses what would never end or never fit (nan, inf, negative) with a one-line usage error.
"""

import argparse
import math


def duration(text):
    """--duration: seconds, or a number with s/m/h."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = _scaled(text, units)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a duration (examples: 90s, 10m, 1h)" % text) from None
    # nan compares false with everything: a nan duration would never end (tests/unit/test_cli.py).
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("%r is not a duration: give a finite one (examples: 90s, 10m, 1h)" % text)
    if value <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return value


def seconds(text):
    """--inject-timeout, --metrics-linger: a finite, non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("%r is not a number of seconds (examples: 5, 0.5)" % text)
    return value


def size(text):
    """--max-capture: bytes, or a number with K/M/G (binary units); 0 is unbounded."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    spelled = text.strip().lower()
    for suffix in ("ib", "b"):
        if spelled.endswith(suffix) and spelled[:-len(suffix)][-1:] in units:
            spelled = spelled[:-len(suffix)]
    try:
        value = _scaled(spelled, units)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a size (examples: 500M, 2G, 64K; 0 for no bound)" % text) from None
    if not math.isfinite(value) or value >= 1 << 62:
        raise argparse.ArgumentTypeError("%r is not a size (examples: 500M, 2G, 64K; 0 for no bound)" % text)
    if value < 0:
        raise argparse.ArgumentTypeError("a size cannot be negative")
    return int(value)


def _scaled(text, units):
    """``text`` as a number, times its unit when it ends with one of ``units``' keys (else ValueError)."""
    if text[-1:] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)
