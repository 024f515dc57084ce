"""Collections in their collector's own terms ('a generation-2 collection', 'an old-generation
increment'), and the thresholds line of the text report."""

from typing import Any, Dict, Optional, Sequence

from trace_quit.tracer.bpf.compat import GENERATIONAL, INCREMENTAL


def collection_name(generation: Optional[int], kind: str = GENERATIONAL) -> str:
    """A collection in its collector's own terms: 'generation-2 collection', or for 3.14.0-3.14.4's
    incremental collector 'young collection' / 'old-generation increment' / 'full collection'."""
    if generation is None:
        return "collection"
    if kind == INCREMENTAL:
        names = {0: "young collection", 1: "old-generation increment", 2: "full collection"}
        return names.get(generation, "collection")
    if kind == GENERATIONAL:
        return "generation-%d collection" % generation
    return "collection (reported generation %d)" % generation


def generation_label(generation: Any, kind: str = GENERATIONAL) -> str:
    """'generation 1' in a count by generation, or the incremental collector's 'old-generation increments'."""
    if kind == INCREMENTAL and str(generation) in ("0", "1", "2"):
        return ("young collections", "old-generation increments", "full collections")[int(generation)]
    return "generation %s" % generation


def a_collection(generation: Optional[int], kind: str = GENERATIONAL) -> str:
    """collection_name with its article: 'a generation-2 collection', 'an old-generation increment …'."""
    name = collection_name(generation, kind)
    return ("an " if name[0] in "aeiou" else "a ") + name


def fmt_thresholds(t: Sequence[int]) -> str:
    """A collector's thresholds as the report writes them: '(700, 10, 10)'."""
    return "(%s)" % ", ".join(str(v) for v in t)


def thresholds_text(summary: Optional[Dict[str, Any]]) -> Optional[str]:
    """One line for the text report: the thresholds in effect and where they came from."""
    if not summary:
        return None
    # Short: it stands on the report's first screen (the Python version is on the line above).
    text = "thresholds %s" % fmt_thresholds(summary["in_effect"])
    if summary["changed_at_run_time"]:
        text += " (set by the program; the interpreter started with %s)" % fmt_thresholds(summary["at_start"])
    if summary["in_effect"] == summary["before_3_13"]:
        text += ", 3.8-3.12's defaults"
    if summary["collector"]:
        text += " · %s collector" % summary["collector"]
    return text
