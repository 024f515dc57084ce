"""The design in the repository: docs/ matches the code, and nothing points outside the repository."""

import os
import re
import subprocess

import pytest

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
    from trace_quit.analysis.server_end import SERVER_EVIDENCE
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


USER_DOCS = ["README.md"] + ["docs/" + n for n in sorted(os.listdir(os.path.join(REPO, "docs"))) if n.endswith(".md")]


def test_the_readme_is_for_users_and_short():
    readme = read("README.md")
    assert len(readme.splitlines()) <= 300
    for section in ("## The two commands", "## Using it", "## Causes", "## Requirements", "## Caveats"):
        assert section in readme, section
    assert "sudo ./scripts/demo" in readme and "sudo ./scripts/test" in readme


@pytest.mark.parametrize("name", USER_DOCS)
def test_user_documents_speak_of_the_product_not_of_how_it_was_built(name):
    text = read(*name.split("/"))
    assert not re.search(r"\b[Ii]ssue \d+|\bissue #\d+", text), "issue number in %s" % name
    assert "the study" not in text.lower() and "study's" not in text.lower(), name
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a date of a run in %s" % name
    assert not re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text), "a commit hash in %s" % name


@pytest.mark.parametrize("name", USER_DOCS)
def test_links_between_documents_resolve(name):
    here = os.path.dirname(os.path.join(REPO, name))
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", read(*name.split("/"))):
        assert os.path.exists(os.path.join(here, target)), (name, target)


def test_one_com_quits_path_is_at_most_six_files_that_exist():
    doc = read("docs", "architecture.md")
    section = re.search(r"## One COM_QUIT, from the probe to the report\n(.*?)(?=\n## )", doc, re.S).group(1)
    files = re.findall(r"^\d\. `([^`]+)`", section, re.M)
    assert 1 <= len(files) <= 6, files
    for path in files:
        assert os.path.isfile(os.path.join(REPO, path)), path


def test_capture_format_documents_no_field_the_schema_does_not_declare():
    doc = read("docs", "capture-format.md")
    for kind, (_, fields) in ev.KINDS.items():
        section = re.search(r"### `%s`.*?(?=\n### |\n## |\Z)" % re.escape(kind), doc, re.S).group(0)
        declared = {f.name for f in fields}
        documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", section, re.M))
        assert documented <= declared, (kind, sorted(documented - declared))
