"""One Cause registry: every renderer reads a cause's words and colours from analysis/words/causes.py."""

import os
import re

from trace_quit.analysis import plot
from trace_quit.analysis.words import causes
from trace_quit.tracer import events as ev

ANALYSIS = os.path.join(os.path.dirname(__file__), "..", "..", "analysis")


def test_every_cause_is_in_the_registry_once():
    assert tuple(causes.CAUSES) == ev.CAUSES
    assert causes.CLIENT_CLOSES == (ev.EXPLICIT_CLOSE, ev.REFCOUNT, ev.GC, ev.SHUTDOWN, ev.UNKNOWN)
    assert plot.CAUSE_COLORS == {c: causes.CAUSES[c].color for c in ev.CAUSES}
    # Told apart by more than colour (tests/unit/test_render_html.py): hatches differ.
    assert len({c.hatch for c in causes.CAUSES.values()}) == len(ev.CAUSES)


def test_no_other_module_keeps_a_table_of_causes_to_words_or_colours():
    table = re.compile(r"ev\.(%s): *[\"']" % "|".join(n.upper() for n in ev.CAUSES))
    found = []
    for name in sorted(os.listdir(ANALYSIS)):
        if name.endswith(".py"):  # the words/ package keeps the registry
            with open(os.path.join(ANALYSIS, name), encoding="utf-8") as f:
                found += ["%s: %s" % (name, line.strip()) for line in f if table.search(line)]
    assert found == []
