"""scripts/setup.sh, scripts/test, scripts/demo and .ci/run: syntax, modes, exit codes."""

import os
import re
import shutil
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ["scripts/setup.sh", "scripts/test", "scripts/demo", "scripts/debian-check", "scripts/debian13-check",
           "scripts/install", "scripts/install-check",
           ".ci/run"]


@pytest.mark.parametrize("path", SCRIPTS)
def test_script_is_executable_bash_with_valid_syntax(path):
    full = os.path.join(REPO, path)
    assert os.stat(full).st_mode & stat.S_IXUSR
    with open(full) as f:
        assert f.readline().strip() == "#!/usr/bin/env bash"
    proc = subprocess.run(["bash", "-n", full], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_ci_run_is_exactly_the_test_command():
    with open(os.path.join(REPO, ".ci/run")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert lines == ["set -e", "exec ./scripts/test"]


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of scripts/test beside a fake set-up and a fake pytest exiting $FAKE_STATUS."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(REPO, "scripts/test"), str(tmp_path / "scripts/test"))
    (tmp_path / "scripts/setup.sh").write_text("#!/bin/sh\necho setup-ran >> \"$(dirname \"$0\")/../log\"\n")
    (tmp_path / ".venv/bin").mkdir(parents=True)
    (tmp_path / ".venv/bin/python").write_text("#!/bin/sh\necho \"pytest $*\" >> \"$(dirname \"$0\")/../../log\"\n"
                                               "exit $FAKE_STATUS\n")
    (tmp_path / ".venv/bin/ruff").write_text("#!/bin/sh\necho \"ruff $*\" >> \"$(dirname \"$0\")/../../log\"\n"
                                             "exit ${FAKE_RUFF:-0}\n")
    for p in ("scripts/setup.sh", ".venv/bin/python", ".venv/bin/ruff"):
        os.chmod(str(tmp_path / p), 0o755)
    return tmp_path


@pytest.mark.root
@pytest.mark.parametrize("pytest_status,expected", [(0, 0), (1, 1), (2, 2), (5, 1)])
def test_scripts_test_runs_setup_then_all_tests_and_fails_on_no_tests(fake_repo, pytest_status, expected):
    if os.geteuid() != 0:
        pytest.skip("not root: scripts/test refuses to run without root")
    env = dict(os.environ, FAKE_STATUS=str(pytest_status))
    proc = subprocess.run([str(fake_repo / "scripts/test"), "-x"], capture_output=True, text=True, env=env,
                          cwd="/")
    assert proc.returncode == expected, proc.stdout + proc.stderr
    setup, lint, run = (fake_repo / "log").read_text().splitlines()
    assert (setup, lint) == ("setup-ran", "ruff check .")
    # pytest's tmp_path and the disposable servers live in this run's own temp root, removed after.
    m = re.match(r"^pytest -m pytest tests -ra --basetemp=(/tmp/tq-run-\w{6})/pytest -x$", run)
    assert m, run
    assert not os.path.exists(m.group(1))
    assert ("collected no tests" in proc.stderr) == (pytest_status == 5)


@pytest.mark.root
def test_scripts_test_stops_on_a_linter_finding_before_any_test(fake_repo):
    if os.geteuid() != 0:
        pytest.skip("not root: scripts/test refuses to run without root")
    env = dict(os.environ, FAKE_STATUS="0", FAKE_RUFF="1")
    proc = subprocess.run([str(fake_repo / "scripts/test")], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 1 and "ruff found the problems above" in proc.stderr
    assert (fake_repo / "log").read_text() == "setup-ran\nruff check .\n"


def test_setup_refuses_to_run_without_root():
    if os.geteuid() == 0:
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "bash", os.path.join(REPO, "scripts/setup.sh")],
                              capture_output=True, text=True)
    else:
        proc = subprocess.run(["bash", os.path.join(REPO, "scripts/setup.sh")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "run as root" in proc.stderr


def test_every_cpython_here_has_a_test_venv_built_from_it():
    # Strict matrix: what tq_support finds (pyenv's, else /usr/bin/python3.X) is what
    # scripts/setup.sh built the venvs from; a stale or missing venv fails here, by name.
    import tq_support

    matrix = tq_support.cpython_matrix()
    assert matrix, "no CPython 3.8-3.13 found at all"
    for version, (python, kind) in matrix.items():
        base = tq_support.venv_base(version)
        assert base is not None, ".venvs/py%s missing: run scripts/setup.sh" % version
        assert (os.path.realpath(base[0]), base[1]) == (os.path.realpath(python), kind), \
            ".venvs/py%s was built from %s, not %s: run scripts/setup.sh" % (version, base[0], python)
    for version in tq_support.required_cpythons():
        assert version in matrix, "TQ_REQUIRE_CPYTHONS names %s, which this machine lacks" % version


def test_install_says_what_it_does_and_refuses_what_it_cannot(tmp_path):
    # scripts/install-check runs the real thing in fresh Debian roots (by hand: docs/platforms.md).
    script = os.path.join(REPO, "scripts/install")
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"))
    help_text = subprocess.run([script, "--help"], capture_output=True, text=True, env=env)
    assert help_text.returncode == 0 and "--remove" in help_text.stdout and "--report-only" in help_text.stdout
    bad = subprocess.run([script, "--bogus"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("install: error: unknown argument '--bogus'")
    nothing = subprocess.run([script, "--report-only", "--remove"], capture_output=True, text=True, env=env)
    assert nothing.returncode == 1 and "nothing to remove" in nothing.stderr
    assert os.listdir(str(tmp_path)) == []  # and it created nothing
