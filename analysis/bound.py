"""A capture that reached its ``--max-capture`` bound: what was counted instead of written.

The writer (tracer/capture.py) stops per-event detail at the bound and counts, into the
trailer's ``bound``, the events not written per kind and the connection ends after it per
cause, as the kernel decided them (``bpf_close``/``bpf_sock_close``) and as the agent saw
them (``conn_close``/``conn_destroy``). The report adds those ends to its totals by cause
and says where the detail stops; nothing here is inferred beyond the counts. A connection
opened before the bound and closed after it has its open in the detail and its end among
the counted, so it is neither "never closed" nor a separate end
(tests/system/test_bpf_bound.py).
"""

from typing import Any, Dict, List, Optional

from trace_quit.tracer import events as ev
from trace_quit.tracer.capture import format_size

from .attribute import Totals
from .drops import fmt_int, fmt_s


def _counts(value: Any) -> Dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): n for k, n in value.items() if type(n) is int and n >= 0}


def read(trailer: Optional[Dict[str, Any]], bpf: bool) -> Optional[Dict[str, Any]]:
    """The trailer's ``bound`` as the report's: which layer's counts it uses (the kernel's when
    the eBPF layer ran, else the agent's), checked; None when the bound was not reached."""
    bound = trailer.get("bound") if isinstance(trailer, dict) else None
    if not isinstance(bound, dict) or type(bound.get("max_bytes")) is not int:
        return None
    after = bound.get("closes_after") if isinstance(bound.get("closes_after"), dict) else {}
    kernel = after.get("kernel") if isinstance(after.get("kernel"), dict) else {}
    agent = after.get("agent") if isinstance(after.get("agent"), dict) else {}
    layer = "kernel" if bpf else "agent"
    chosen = kernel if bpf else agent
    not_written = _counts(bound.get("not_written"))
    return {"max_bytes": bound["max_bytes"], "reached_t": bound.get("reached_t"),
            "not_written": sum(not_written.values()), "not_written_by_kind": not_written,
            "closes_after_from": layer,
            "closes_after": {c: n for c, n in _counts(chosen.get("by_cause")).items() if n},
            "closes_after_gc_by_generation": _counts(chosen.get("gc_by_generation")),
            "closes_after_wire": _counts(kernel.get("wire")),
            "agent_closes_after": _counts(agent.get("by_cause")),
            "opened_after": chosen.get("opened") if type(chosen.get("opened")) is int else 0}


def add_to_totals(info: Dict[str, Any], totals: Totals) -> None:
    """The counted ends join the report's totals by cause (gc by generation, the kernel's wire verdicts)."""
    if info["closes_after_from"] == "kernel":
        totals.wire.update(info["closes_after_wire"])
    else:  # the agent alone does not see the wire
        totals.wire[ev.WIRE_UNOBSERVED] += sum(info["closes_after"].values())
    for cause, n in info["closes_after"].items():
        totals.by_cause[cause if cause in ev.CAUSES else ev.UNKNOWN] += n
    for gen, n in info["closes_after_gc_by_generation"].items():
        totals.gc_by_generation[int(gen) if gen.isdigit() else None] += n


def line(info: Dict[str, Any]) -> str:
    """The report's sentence: where the detail stops and what was counted after it."""
    parts = []
    gens = info["closes_after_gc_by_generation"]
    for cause, n in sorted(info["closes_after"].items(), key=lambda kv: (-kv[1], kv[0])):
        text = "%s %s" % (cause, fmt_int(n))
        if cause == ev.GC and gens:
            text += " (%s)" % ", ".join("gen %s: %s" % (g, fmt_int(k)) for g, k in sorted(gens.items()) if k)
        parts.append(text)
    at = "+%s s" % fmt_s(info["t_s"]) if info.get("t_s") is not None else "an unknown time"
    out = "Capture bound reached at %s (--max-capture %s): %s not written; after it %s opened and " \
          "connection ends by cause (%s): %s" % (
              at, format_size(info["max_bytes"]), _events(info["not_written"]), fmt_int(info["opened_after"]),
              "the kernel's" if info["closes_after_from"] == "kernel" else "the agent's", ", ".join(parts) or "none")
    if parts:
        out += " (counted in the totals; no detail for them)"
    return out + "."


def _events(n: int) -> str:
    return "%s %s" % (fmt_int(n), "event" if n == 1 else "events")


def hold_back_late_agent_records(lives, events, info: Dict[str, Any]) -> List[Any]:
    """Past the bound, the agent's records later than the last kernel record written may have
    their kernel twins among the counted (the agent's channel and the ring buffer arrive at
    their own pace). An end only the agent's record shows is taken off (its life stays open
    here: the end is counted once, among the kernel's counts), and a life only the agent's
    conn_open shows, with no end left, is dropped (its connect is among the kernel's counted
    ones). Not a PyMySQL connection open before attach: the kernel never knew its socket, so
    its end is the agent's alone. Returns the lives kept."""
    if info["closes_after_from"] != "kernel":
        return lives
    # The kernel's per-event records only: its counters go on being sampled past the bound.
    last_bpf = max((e["t"] for e in events if e.get("src") == ev.SRC_BPF and e.get("k") != ev.BPF_STATS),
                   default=None)
    if last_bpf is None:
        return lives
    kept = []
    for life in lives:
        opened = life.agent_open or {}
        kernel_blind = opened.get("before_attach") is True and opened.get("driver") == "pymysql"
        end = life.agent_end
        if (end is not None and life.bpf_end is None and end.get("t", 0) > last_bpf and not kernel_blind):
            life.agent_end = None
            life.agent_collection = None
        if (life.bpf_open is None and opened.get("t", 0) > last_bpf and life.agent_end is None
                and life.bpf_end is None and not opened.get("before_attach")):
            continue
        kept.append(life)
    return kept
