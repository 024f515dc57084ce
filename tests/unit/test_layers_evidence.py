"""Why the agent stays out of a process, read from its command line (tracer/program.py)."""

import json
import shlex
import subprocess
import sys

import pytest

from tq_support import TRACE_QUIT
from trace_quit.tracer.program import why_no_agent


@pytest.mark.parametrize("argv, reason", [
    (["python3", "-I", "app.py"], "python -I ignores PYTHONPATH"),
    (["/usr/bin/python3.11", "-uE", "app.py"], "python -E ignores PYTHONPATH"),
    (["python", "-S", "-c", "pass"], "python -S skips sitecustomize, which loads the agent"),
    (["env", "-i", "python3", "app.py"], "env -i clears the environment, PYTHONPATH with it"),
    (["env", "-u", "PYTHONPATH", "python3", "app.py"], "env -u PYTHONPATH removes the agent's path"),
    (["env", "A=1", "PYTHONPATH=/src", "python3", "app.py"],
     "the command sets PYTHONPATH itself, replacing the agent's"),
    (["python3", "app.py", "-I"], None),            # the script's own argument
    (["python3", "-c", "-I"], None),
    (["python3", "-m", "pytest", "-E"], None),
    (["python3", "-Wignore", "app.py"], None),      # a W value that happens to hold an I
    (["bash", "-c", "python3 -I x.py"], None),
])
def test_why_the_agent_stays_out(argv, reason):
    assert why_no_agent(argv) == reason


def test_python_minus_i_is_said_and_the_report_shows_no_agent(tmp_path):
    """It said `agent ✓` although the agent never loaded."""
    capture = str(tmp_path / "x.tqcap")
    proc = subprocess.run(TRACE_QUIT + ["--no-bpf", "--quiet", "--format", "none", "-o", capture, "--",
                                        sys.executable, "-I", "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout)
    assert "trace-quit: the agent did not load in pid %d: python -I ignores PYTHONPATH\n" % pid in proc.stderr
    from trace_quit.analysis.capture import load

    assert load(capture).trailer["agent"] == {"loaded_in": [], "missing": {str(pid): "python -I ignores PYTHONPATH"}}
    report = json.loads(subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True,
                                       text=True, check=True).stdout)
    assert report["layers"]["agent"] is False
    assert any(n["text"] == "the agent did not load in pid %d: python -I ignores PYTHONPATH" % pid
               for n in report["notes"])
    text = subprocess.run(TRACE_QUIT + ["report", capture], capture_output=True, text=True, check=True).stdout
    flat = " ".join(text.split())  # the text report wraps to its width
    assert "agent –" in flat and "python -I ignores PYTHONPATH" in flat


def test_a_spawned_python_that_loads_the_agent_is_listed_by_pid(tmp_path):
    capture = str(tmp_path / "y.tqcap")
    child = "import os; print(os.getpid())"
    proc = subprocess.run(TRACE_QUIT + ["--no-bpf", "--quiet", "--format", "none", "-o", capture, "--",
                                        "sh", "-c", "%s -c %s" % (sys.executable, shlex.quote(child))],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    from trace_quit.analysis.capture import load

    assert load(capture).trailer["agent"] == {"loaded_in": [int(proc.stdout)], "missing": {}}
    assert "did not load" not in proc.stderr
