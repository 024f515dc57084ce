"""probes.c and the files it includes (tracer/bpf/probes/*.h) become one text for bcc
(tracer/bpf/compile.py, probes_source); no root, no bcc."""

import ast
import fnmatch
import os
import re

from trace_quit.tracer.bpf.compile import probes_source

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BPF = os.path.join(REPO, "tracer", "bpf")


def _included():
    with open(os.path.join(BPF, "probes.c")) as f:
        return re.findall(r'^#include "(probes/[\w.]+)"', f.read(), re.M)


def test_every_file_is_included_once_and_put_in_place():
    files = sorted("probes/" + name for name in os.listdir(os.path.join(BPF, "probes")))
    included = _included()
    assert sorted(included) == files and len(set(included)) == len(included)
    text = probes_source()
    assert not re.search(r'^#include "', text, re.M)    # bcc would look for them in its own directory
    for name in included:
        with open(os.path.join(BPF, name)) as f:
            body = f.read()
        assert '#line 1 "%s"\n%s' % (name, body) in text, name
    # The files in the order probes.c lists them: each uses what the ones before it declare.
    assert [m.group(1) for m in re.finditer(r'^#line 1 "(probes/[\w.]+)"', text, re.M)] == included


def test_the_package_ships_every_included_file():
    """pyproject's package data for trace_quit.tracer.bpf names every file probes.c includes."""
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        line = re.search(r'^"trace_quit\.tracer\.bpf" = (\[.*\])$', f.read(), re.M).group(1)
    patterns = ast.literal_eval(line)
    for name in ["probes.c"] + _included():
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name
