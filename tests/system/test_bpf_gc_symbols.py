"""The GC brackets read the right generation on every CPython we can get (symbols or USDT).

gc.collect(0), (1), (2), (0) must show up as gc_start events with exactly those generations,
in that order, from the kernel side: pyenv 3.9-3.13 through the collection function's
argument register (resolve.GC_FUNCTIONS), Debian's 3.11 (sid: 3.14, 3.15) through USDT
python:gc__start.
pyenv 3.8 is built with GCC clones that hide the generation: brackets, generation unknown.
"""

import os

import pytest

from bpf_harness import trace_command
from tq_support import VENV_PY, cpython_param, venv_base, venv_python_for

pytestmark = [pytest.mark.bpf]

PROG = "import gc; gc.disable(); gc.collect(0); gc.collect(1); gc.collect(2); gc.collect(0)"


def _contains_in_order(seq, sub):
    for i in range(len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return True
    return False


def _gc_mode(which):
    """pyenv's CPythons are probed through symbols, the distribution's through USDT."""
    return "usdt" if which == "debian" or (venv_base(which) or ("", "pyenv"))[1] == "system" else "symbol"


@pytest.mark.parametrize("which", ["debian"] + [cpython_param(v) for v in ("3.9", "3.10", "3.11", "3.12", "3.13",
                                                                     "3.14", "3.15")])
def test_gc_generation_is_read_from_the_kernel_side(which):
    python = VENV_PY if which == "debian" else venv_python_for(which)
    assert os.path.exists(python), "test venv %s missing: run scripts/setup.sh" % python
    run = trace_command([python, "-c", PROG])
    assert run.status == 0
    assert run.describe["targets"]["gc_mode"] == _gc_mode(which)
    starts = [e["gen"] for e in run.of("bpf_gc_start")]
    assert _contains_in_order(starts, [0, 1, 2, 0]), starts
    assert len(run.of("bpf_gc_done")) == len(starts)


@pytest.mark.parametrize("version", [cpython_param("3.8")])
def test_python38_brackets_without_generation(version):
    python = venv_python_for(version)
    assert os.path.exists(python), "test venv %s missing: run scripts/setup.sh" % python
    run = trace_command([python, "-c", PROG])
    assert run.status == 0
    assert run.describe["targets"]["gc_mode"] == "symbol"
    assert any("generation not readable" in n for n in run.describe["targets"]["notes"])
    starts = [e["gen"] for e in run.of("bpf_gc_start")]
    assert len(starts) >= 4 and set(starts) == {None}
    assert all(e["gen"] is None for e in run.of("bpf_gc_done"))
