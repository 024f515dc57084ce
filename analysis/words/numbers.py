"""Numbers as every sentence writes them: '10,575', '0.364 s', '~5.1 s', '2 connections'."""

import math
from typing import Optional


def fmt_int(n: int) -> str:
    """10575 -> '10,575'."""
    return "{:,}".format(n)


def fmt_s(x: float) -> str:
    """Seconds for prose: '0.364', '66.3', '812'."""
    if abs(x) < 1:
        return "%.3f" % x
    return ("%.1f" % x) if abs(x) < 100 else ("%.0f" % x)


def fmt_approx(x: float) -> str:
    """An approximate number of seconds to two significant figures: '0.53', '5.1', '66', '810'."""
    r = float("%.2g" % x)
    if r == 0:
        return "0"
    if abs(r) >= 10:
        return "%d" % r
    return "%.*f" % (1 - int(math.floor(math.log10(abs(r)))), r)


def plural(n: int, word: str, words: Optional[str] = None) -> str:
    """'1 connection', '2 connections'."""
    return "%s %s" % (fmt_int(n), word if n == 1 else (words or word + "s"))
