"""Helpers shared by the test layers: run the real CLI, read captures, find test interpreters."""

import collections
import glob
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(REPO, ".venv", "bin", "python")
TRACE_QUIT = [sys.executable, "-m", "trace_quit.tracer.cli"]
PYENV_ROOT = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
AGENT_VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")


def venv_python_for(version):
    """The interpreter of the test venv for ``version`` that scripts/setup.sh builds."""
    return os.path.join(REPO, ".venvs", "py" + version, "bin", "python")


def pyenv_has(version):
    return bool(glob.glob(os.path.join(PYENV_ROOT, "versions", version + ".*")))


def run_traced(tmp_path, argv, *, bpf=False, extra=(), env=None, timeout=300, name="run"):
    """Run ``trace-quit [--no-bpf] -o CAPTURE -- argv``; return (completed process, capture path)."""
    capture = str(tmp_path / (name + ".tqcap"))
    cmd = TRACE_QUIT + ["--format", "none", "--quiet", "-o", capture]
    if not bpf:
        cmd.append("--no-bpf")
    cmd += list(extra) + ["--"] + list(argv)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp_path))
    return proc, capture


def load_events(capture):
    from trace_quit.analysis.capture import load

    return load(capture)


def destroy_causes(events):
    """Counter of (cause, gen) over the agent's conn_destroy events."""
    return collections.Counter((e["cause"], e.get("gen")) for e in events if e["k"] == "conn_destroy")


def kinds(events):
    return collections.Counter(e["k"] for e in events)


#: What known-causes (workloads/known_causes.py, default arguments) sends, by (cause, generation):
#: its two atexit rows count as refcount (2) and gc generation 2 (3), not shutdown.
KNOWN_CAUSES = {("explicit_close", None): 7, ("refcount", None): 13, ("gc", 0): 5, ("gc", 2): 16,
                ("shutdown", None): 3}
KNOWN_CAUSES_TOTAL = sum(KNOWN_CAUSES.values())  # 44 COM_QUITs
