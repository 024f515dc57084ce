"""The live-connection curve and the plot-ready series of the report.

Client-side live connections step up at each successful open and down at each end (its
COM_QUIT, or the process's end for a connection never closed). A connection whose open was
not recorded (opened before the capture, inherited through fork) counts as live from the
start. Failed connects never count.
"""

import bisect
import math
from typing import Dict, List, Optional, Sequence, Tuple

from trace_quit.tracer import events as ev

from .join import Life

#: The plot never needs more points than this; the envelope keeps every drop's depth.
MAX_POINTS = 4000


class LiveCurve:
    """Live connections as a step function: ``times[i]`` → ``values[i]`` after every change at it."""

    def __init__(self, lives: Sequence[Life]):
        deltas: Dict[int, int] = {}
        initial = 0
        for life in lives:
            if life.failed:
                continue
            if life.t_open is None:
                if life.t_end is None:
                    continue
                initial += 1
            else:
                deltas[life.t_open] = deltas.get(life.t_open, 0) + 1
            if life.t_end is not None:
                deltas[life.t_end] = deltas.get(life.t_end, 0) - 1
        self.initial = initial
        self.times: List[int] = sorted(deltas)
        values = []
        live = initial
        for t in self.times:
            live += deltas[t]
            values.append(live)
        self.values: List[int] = values

    def before(self, t: int) -> int:
        """Live connections just before anything happened at ``t``."""
        i = bisect.bisect_left(self.times, t)
        return self.values[i - 1] if i > 0 else self.initial

    def after(self, t: int) -> int:
        """Live connections just after everything that happened at ``t``."""
        i = bisect.bisect_right(self.times, t)
        return self.values[i - 1] if i > 0 else self.initial

    def maximum(self) -> Tuple[int, Optional[int]]:
        """(max live, first time it was reached)."""
        best, when = self.initial, None
        for t, v in zip(self.times, self.values):
            if v > best:
                best, when = v, t
        return best, when


def envelope(times: Sequence[int], values: Sequence[int], t0: int, start_value: int,
             max_points: int = MAX_POINTS) -> List[List[float]]:
    """Downsample a step series to at most ~``max_points`` [t_s, value] points, keeping each
    bucket's first, lowest, highest and last value so that no drop or peak disappears."""
    n = len(times)
    out: List[List[float]] = [[0.0, start_value]]
    if n == 0:
        return out
    if n <= max_points:
        out.extend([round((t - t0) / 1e9, 6), v] for t, v in zip(times, values))
        return out
    buckets = max(1, max_points // 4)
    span = max(1, times[-1] - times[0])
    width = span / buckets
    i = 0
    while i < n:
        b = int((times[i] - times[0]) / width)
        end_t = times[0] + (b + 1) * width
        j = i
        lo = hi = i
        while j < n and (times[j] < end_t or b == buckets - 1):
            if values[j] < values[lo]:
                lo = j
            if values[j] > values[hi]:
                hi = j
            j += 1
        if j == i:
            j = i + 1
        for idx in sorted({i, lo, hi, j - 1}):
            out.append([round((times[idx] - t0) / 1e9, 6), values[idx]])
        i = j
    return out


def nice_bin(duration_s: float, bins: int = 100) -> float:
    """A round bin width (1, 2, 5 × 10^k seconds) giving about ``bins`` bins."""
    if duration_s <= 0:
        return 1.0
    raw = duration_s / bins
    exp = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        w = m * 10 ** exp
        if w >= raw:
            return float(round(w, 12))
    return float(10 ** (exp + 1))


def quit_histogram(ends: Sequence[Tuple[float, str]], duration_s: float,
                   width: Optional[float] = None) -> Tuple[float, Dict[str, List[int]]]:
    """COM_QUITs per series per bin: (bin width, {series: counts}), empty series left out.

    ``ends`` are (t_s, series) with series from ``quit_key``; ``width`` fixes the bin width
    (a comparison page uses one for every capture), else a round one for ``duration_s``."""
    width = width or nice_bin(duration_s)
    nbins = max(1, int(math.ceil(max(duration_s, 0) / width)) + 1)
    bins: Dict[str, List[int]] = {}
    for t_s, cause in ends:
        row = bins.get(cause)
        if row is None:
            row = bins[cause] = [0] * nbins
        i = int(max(t_s, 0) / width)
        if i >= nbins:
            row.extend([0] * (i + 1 - nbins))
            for other in bins.values():
                if len(other) < i + 1:
                    other.extend([0] * (i + 1 - len(other)))
            nbins = i + 1
        row[i] += 1
    order = sorted(bins, key=_bin_rank)
    return width, {c: bins[c] for c in order}


def quit_key(cause: str, generation: Optional[int]) -> str:
    """The histogram's series name: the cause, with GC split by generation ("gc.1")."""
    if cause == ev.GC:
        return "gc.%s" % ("?" if generation is None else generation)
    return cause


def _bin_rank(key: str):
    cause, _, gen = key.partition(".")
    rank = ev.CAUSES.index(cause) if cause in ev.CAUSES else len(ev.CAUSES)
    return (rank, gen)
