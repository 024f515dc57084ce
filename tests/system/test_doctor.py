"""`trace-quit doctor` as root and as an unprivileged user (setpriv to nobody)."""

import os
import shutil
import subprocess
import sys

import pytest

from tq_support import TRACE_QUIT

pytestmark = pytest.mark.root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _doctor(*args, user=None, env=None):
    cmd = TRACE_QUIT + ["doctor"] + list(args)
    if user:
        cmd = ["setpriv", "--reuid=%s" % user, "--regid=nogroup", "--clear-groups"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, **(env or {})))


def _line(out, name):
    return next(line for line in out.splitlines() if line[5:].startswith(name + " "))


@pytest.fixture(autouse=True)
def _needs_root_and_setpriv():
    if os.geteuid() != 0:
        pytest.skip("needs root (to drop to nobody with setpriv)")
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux)")


def test_as_nobody_it_says_needs_root_and_fails():
    r = _doctor("--", sys.executable, "app.py", user="nobody")
    assert r.returncode == 1, r.stdout + r.stderr
    bpf = _line(r.stdout, "bpf syscall")
    assert bpf.startswith("FAIL") and bpf.endswith("not tried: needs root")
    assert "CONFIG_BPF_SYSCALL" not in r.stdout
    tracefs = _line(r.stdout, "tracefs (optional)")
    assert tracefs.startswith("miss") and "needs root" in tracefs and "mounted: no" not in r.stdout
    assert "needs root: run `sudo trace-quit doctor`" in r.stdout
    assert r.stdout.rstrip().splitlines()[-1].startswith("essential checks failed: root, bpf syscall")


def test_as_root_checks_the_commands_python_and_hides_jargon():
    r = _doctor("--", sys.executable, "app.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _line(r.stdout, "python") == "ok   %-31s %s (the command's interpreter)" % ("python", sys.executable)
    version = "%d.%d.%d" % sys.version_info[:3]
    assert "Python %s" % version in _line(r.stdout, "gc probes (optional)")
    assert "+9 is" not in r.stdout and "file offset" not in r.stdout
    verbose = _doctor("--verbose", "--", sys.executable, "app.py")
    assert "file offset 0x" in verbose.stdout


def test_without_a_command_the_first_python3_on_path_and_says_so(tmp_path):
    (tmp_path / "python3").symlink_to(sys.executable)
    r = _doctor("--json", env={"PATH": "%s:%s" % (tmp_path, os.environ.get("PATH", ""))})
    import json
    checks = json.loads(r.stdout)
    assert checks[0]["name"] == "python"
    assert checks[0]["detail"] == "%s (the first python3 on PATH)" % (tmp_path / "python3")
    assert r.returncode == 0
