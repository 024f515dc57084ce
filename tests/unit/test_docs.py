"""The design in the repository: docs/ matches the code, and nothing points outside the repository."""

import os
import re
import subprocess

from trace_quit.tracer import events as ev

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def read(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as f:
        return f.read()


def test_capture_format_lists_every_kind_and_field_of_the_schema():
    doc = read("docs", "capture-format.md")
    for kind, (_, fields) in ev.KINDS.items():
        section = re.search(r"### `%s`.*?(?=\n### |\n## |\Z)" % re.escape(kind), doc, re.S)
        assert section, "docs/capture-format.md has no section for %s" % kind
        for f in fields:
            if f.name in ("t", "src", "pid", "tid"):
                continue
            required = "yes" if f.required else "no"
            assert "| `%s` |" % f.name in section.group(0), (kind, f.name)
            assert re.search(r"\| `%s` \| [^|]+ \| %s \| %d \|" % (f.name, required, f.since), section.group(0)), (
                kind, f.name, "required/since differ from tracer/events.py")
    for f in ev.HEADER_FIELDS:
        assert "| `%s` |" % f.name in doc


def test_causes_doc_names_every_cause_and_the_one_deciding_file():
    doc = read("docs", "causes.md")
    for cause in ev.CAUSES:
        assert "`%s`" % cause in doc, cause
    from trace_quit.analysis.attribute import SERVER_EVIDENCE
    for kind in SERVER_EVIDENCE:
        assert "`%s`" % kind in doc, kind
    assert "`analysis/attribute.py`" in doc and "`analysis/attribute.py`" in read("README.md")




def test_no_file_points_outside_the_repository():
    # git grep: the tracked files of this checkout, whatever is installed beside it.
    # A copy without git (scripts/debian13-check's chroot has neither .git nor git): its files,
    # minus what set-up builds beside them.
    pattern = "DESIGN" + r"\.md\|FACTS" + r"\.md\|STUDY" + r"\.md\|\.\./" + "shared"
    if os.path.isdir(os.path.join(REPO, ".git")) or os.path.isfile(os.path.join(REPO, ".git")):
        out = subprocess.run(["git", "grep", "-l", pattern, "--", ".", ":!docs"], cwd=REPO,
                             stdout=subprocess.PIPE, universal_newlines=True).stdout.split()
    else:
        found = re.compile(pattern.replace("\\|", "|").encode())
        skip = {".git", ".venv", ".venvs", "docs", "__pycache__", ".pytest_cache", ".ruff_cache"}
        out = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    if found.search(f.read()):
                        out.append(os.path.relpath(path, REPO))
    assert out == [], "files citing notes outside the repository: %s" % out
