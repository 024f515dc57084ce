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
from trace_quit.tracer.records import make

from .attribute import Context, Totals, decide
from .evidence import Life


def _counts(value: Any) -> Dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): n for k, n in value.items() if type(n) is int and n >= 0}


def read(trailer: Optional[Dict[str, Any]], bpf: bool, ctx: Optional[Context] = None) -> Optional[Dict[str, Any]]:
    """The trailer's ``bound`` as the report's: which layer's counts it uses (the kernel's when
    the eBPF layer ran, else the agent's), checked; None when the bound was not reached. The
    kernel's evidence rows, when the writer kept them, are decided by ``attribute.decide``
    (``ctx``: the capture's layers), so the ends after the bound get the causes the detail
    would have given them; older captures have the kernel's own causes only."""
    bound = trailer.get("bound") if isinstance(trailer, dict) else None
    if not isinstance(bound, dict) or type(bound.get("max_bytes")) is not int:
        return None
    after = bound.get("closes_after") if isinstance(bound.get("closes_after"), dict) else {}
    kernel = after.get("kernel") if isinstance(after.get("kernel"), dict) else {}
    agent = after.get("agent") if isinstance(after.get("agent"), dict) else {}
    layer = "kernel" if bpf else "agent"
    chosen = kernel if bpf else agent
    not_written = _counts(bound.get("not_written"))
    rows = kernel.get("rows")
    if bpf and isinstance(rows, list):
        decided = decide_rows(rows, ctx or Context(agent=False, bpf=True, wire=True, process_ended=lambda pid: None))
        chosen = dict(chosen, by_cause=dict(decided.by_cause),
                      gc_by_generation={_gen_key(g): n for g, n in decided.gc_by_generation.items()})
        kernel = dict(kernel, wire=dict(decided.wire))
    return {"max_bytes": bound["max_bytes"], "reached_t": bound.get("reached_t"),
            "not_written": sum(not_written.values()), "not_written_by_kind": not_written,
            "closes_after_from": layer,
            "closes_after": {c: n for c, n in _counts(chosen.get("by_cause")).items() if n},
            "closes_after_gc_by_generation": _counts(chosen.get("gc_by_generation")),
            "closes_after_wire": _counts(kernel.get("wire")),
            "agent_closes_after": _counts(agent.get("by_cause")),
            "opened_after": chosen.get("opened") if type(chosen.get("opened")) is int else 0}


def _gen_key(gen: Optional[int]) -> str:
    return str(gen) if type(gen) is int else "unknown"


def decide_rows(rows: List[Any], ctx: Context) -> Totals:
    """The kernel's evidence rows past the bound ([ends, evidence], tracer/capture.py), each
    decided as one connection life with that evidence, counted ``ends`` times. A failed
    connect's close is no COM_QUIT, as in the detail."""
    totals = Totals()
    for item in rows:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], dict)):
            continue
        n, row = item
        if row.get("failed") is True or n <= 0:
            continue
        verdict = decide(_life_of(row), ctx)
        if verdict is not None:
            totals.add(verdict.cause, verdict.generation, verdict.wire, None, n)
    return totals


def _life_of(row: Dict[str, Any]) -> Life:
    """A connection life whose only evidence is one row's (opened: its connect is not a failed one)."""
    life = Life(0, 0)
    life.bpf_open = make(ev.BPF_CONNECT, ok=True)
    kind = row.get("k") if row.get("k") in (ev.BPF_CLOSE, ev.BPF_SOCK_CLOSE) else ev.BPF_CLOSE
    life.bpf_end = make(kind, t=0, **{k: row.get(k) for k in ("cause", "gen", "sock", "last_errno", "eof",
                                                                  "quit_sent")})
    life.eof = row.get("eof") is True
    if kind == ev.BPF_SOCK_CLOSE:
        wire = row.get("wire")
        if wire not in ev.WIRE_STATES:
            wire = ev.WIRE_CONFIRMED if row.get("quit_sent") else ev.WIRE_NOT_SENT
        life.bpf_ret = make(ev.BPF_CLOSE_RET, wire=wire)
        return life
    if "wire" in row:  # its mysql_close returned
        life.bpf_ret = make(ev.BPF_CLOSE_RET, wire=row.get("wire"), send_err=row.get("send_err"),
                            fin_first=row.get("fin_first"))
        errors = [e for e in (row.get("send_errors") or []) if type(e) is int]
        if type(row.get("send_err")) is int and row["send_err"]:
            errors.append(-abs(row["send_err"]))
        life.send_errors = sorted(set(errors)) or None
    return life


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
    last_bpf = max((e.t for e in events if e.src == ev.SRC_BPF and e.k != ev.BPF_STATS),
                   default=None)
    if last_bpf is None:
        return lives
    kept = []
    for life in lives:
        opened = life.agent_open
        before_attach = opened is not None and opened.k == ev.CONN_OPEN and opened.before_attach is True
        kernel_blind = before_attach and opened.driver == "pymysql"
        end = life.agent_end
        if (end is not None and life.bpf_end is None and end.t > last_bpf and not kernel_blind):
            life.agent_end = None
            life.agent_collection = None
        if (life.bpf_open is None and opened is not None and opened.t > last_bpf and life.agent_end is None
                and life.bpf_end is None and not before_attach):
            continue
        kept.append(life)
    return kept
