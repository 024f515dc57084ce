"""Golden reports: the JSON and text reports of every real capture fixture, byte for byte.

A refactoring of the reader, the join or the attribution must not change a single report;
a deliberate change of the report regenerates the files with
``TRACE_QUIT_REGOLDEN=1 .venv/bin/python -m pytest tests/unit/test_golden_reports.py`` and
shows up in review as a diff of tests/unit/data/golden/.
"""

import os

import pytest

from trace_quit.analysis import build_report, load, render
from tq_support import FIXTURES as TQ_FIXTURES
from tq_support import fixture_path

DATA = os.path.join(os.path.dirname(__file__), "data")
GOLDEN = os.path.join(DATA, "golden")
FIXTURES = [n[:-len(".tqcap")] for n in TQ_FIXTURES]


def report_of(tmp_path, name):
    """The report of fixture ``name``, read through a relative path (the report names it)."""
    fixture_path(tmp_path, name + ".tqcap")
    return build_report(load(name + ".tqcap"))


def test_every_fixture_has_golden_files():
    assert FIXTURES, "no real capture fixtures found in %s" % DATA
    for name in FIXTURES:
        for fmt in ("json", "txt"):
            assert os.path.exists(os.path.join(GOLDEN, "%s.%s" % (name, fmt))) or os.environ.get(
                "TRACE_QUIT_REGOLDEN"), "%s.%s missing: regenerate (see this file's docstring)" % (name, fmt)


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_report_is_unchanged(tmp_path, monkeypatch, name, fmt):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(tmp_path)
    text = render([report_of(tmp_path, name)], fmt, color=False)
    golden = os.path.join(GOLDEN, "%s.%s" % (name, "txt" if fmt == "text" else fmt))
    if os.environ.get("TRACE_QUIT_REGOLDEN"):
        with open(golden, "w", encoding="utf-8") as f:
            f.write(text)
    with open(golden, encoding="utf-8") as f:
        assert text == f.read(), "the %s report of %s changed" % (fmt, name)
