"""trace-quit --pid as root against a program whose user is hostile: nothing of theirs runs as root.

An unprivileged user made for the test (removed after it) owns the traced program and plants
what it can where root might look (docs/security-attach.md, one rule per surface):

* its interpreter is a copy of python named ``python3.14`` in a venv whose site-packages has a
  ``.pth`` that leaves a proof file named after the uid it ran as: root must never run it
  (it did, to call sys.remote_exec, and again to resolve the probes);
* where the probe resolution would look for MySQLdb (the script's directory, the venv): a FIFO
  named like ``_mysql*.so``, ``release.py`` a link to /dev/zero, and ``pyvenv.cfg`` swapped for
  a FIFO once the program runs: the tracer neither hangs nor reads without bound;
* the same program in another mount namespace (what a chroot or a container looks like from
  the host): no agent (it would need a path there), no file of that root run or opened;
* after each attach: no file in the user's home belongs to root, the program still runs.
"""

import os
import pwd
import shutil
import subprocess
import time

import pytest
from tq_support import TRACE_QUIT

pytestmark = [pytest.mark.bpf, pytest.mark.root]

APP = r'''
import os, sys, threading, time
def worker():
    while True:
        time.sleep(0.01)
threading.Thread(target=worker, daemon=True).start()
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(0.05)
'''
PTH = "import os; open(%r + '/%%d-%%d' %% (os.getuid(), os.getpid()), 'w').close()\n"


@pytest.fixture
def attacker():
    """An unprivileged user with a home of its own; removed (home included) afterwards."""
    name = "tqatk%d" % (os.getpid() % 100000)
    subprocess.run(["userdel", "-r", name], capture_output=True)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:  # its processes were ended by the tests, by pid
        subprocess.run(["userdel", "-r", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


def as_user(user, argv, **kwargs):
    return subprocess.run(argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[], check=True,
                          capture_output=True, cwd=user.pw_dir, **kwargs)


def _hostile_venv(user):
    """A venv of the user's whose interpreter is named python3.14, with the proof .pth and the plants."""
    home = user.pw_dir
    venv = os.path.join(home, "v")
    as_user(user, ["/usr/bin/python3", "-m", "venv", "--without-pip", "--copies", venv])
    python = os.path.join(venv, "bin", "python3.14")
    as_user(user, ["cp", os.path.join(venv, "bin", "python3"), python])
    minor = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('python%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    site = os.path.join(venv, "lib", minor, "site-packages")
    proofs = os.path.join(home, "proofs")
    app = os.path.join(home, "app")
    script = (
        "import os\n"
        "os.makedirs(%(proofs)r, exist_ok=True); os.chmod(%(proofs)r, 0o777)\n"
        "open(%(site)r + '/proof.pth', 'w').write(%(pth)r)\n"
        "for d in (%(app)r + '/MySQLdb', %(site)r + '/MySQLdb'):\n"
        "    os.makedirs(d, exist_ok=True)\n"
        "    os.mkfifo(d + '/_mysql.cpython-311-x86_64-linux-gnu.so')\n"
        "    os.symlink('/dev/zero', d + '/release.py')\n"
        "open(%(app)r + '/app.py', 'w').write(%(src)r)\n"
        % {"proofs": proofs, "site": site, "pth": PTH % proofs, "app": app, "src": APP})
    as_user(user, ["/usr/bin/python3", "-c", script])
    return python, proofs, os.path.join(app, "app.py")


def _start(user, argv, pid_file, tmp_path):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=user.pw_dir)
    deadline = time.monotonic() + 30
    while not os.path.exists(pid_file):
        assert proc.poll() is None and time.monotonic() < deadline, "the program did not start"
        time.sleep(0.05)
    with open(pid_file) as f:
        return proc, int(f.read())


def _swap_for_fifo(user, path):
    as_user(user, ["/usr/bin/python3", "-c", "import os, sys; os.rename(sys.argv[1], sys.argv[1] + '.real'); "
                   "os.mkfifo(sys.argv[1])", path])


def _attach(pid, tmp_path):
    t0 = time.monotonic()
    done = subprocess.run(TRACE_QUIT + ["--pid", str(pid), "--duration", "2", "--quiet", "--format", "none",
                                        "-o", str(tmp_path / ("attach%d.tqcap" % pid))],
                          capture_output=True, text=True, timeout=180)
    return done, time.monotonic() - t0


def _nothing_of_root(user, proofs):
    ran_as = sorted({name.split("-")[0] for name in os.listdir(proofs)})
    assert ran_as == [str(user.pw_uid)], "the user's .pth ran as uid %s" % ran_as
    for top, dirs, files in os.walk(user.pw_dir):
        for name in dirs + files:
            st = os.lstat(os.path.join(top, name))
            assert st.st_uid == user.pw_uid, "root wrote %s" % os.path.join(top, name)


def test_a_hostile_user_owned_python314_is_never_run_as_root(attacker, tmp_path):
    python, proofs, app = _hostile_venv(attacker)
    pid_file = os.path.join(attacker.pw_dir, "app.pid")
    user_argv = ["setpriv", "--reuid=%d" % attacker.pw_uid, "--regid=%d" % attacker.pw_gid, "--clear-groups"]
    proc, pid = _start(attacker, user_argv + [python, app, pid_file], pid_file, tmp_path)
    try:
        _swap_for_fifo(attacker, os.path.join(attacker.pw_dir, "v", "pyvenv.cfg"))  # read by root? never hangs it
        done, took = _attach(pid, tmp_path)
        assert done.returncode == 0, done.stderr
        assert took < 120
        with open(tmp_path / ("attach%d.tqcap" % pid), "rb") as f:  # the agent ran there, as that user
            assert b"agent injected into process %d" % pid in f.read()
        assert proc.poll() is None  # still running
        _nothing_of_root(attacker, proofs)
        # The planted _mysql*.so FIFOs are not taken for MySQLdb, nor opened.
        assert "_mysql" not in done.stderr, done.stderr
    finally:
        proc.kill()
        proc.wait()


def test_a_target_in_another_mount_namespace_gets_no_agent_and_runs_nothing(attacker, tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing")
    python, proofs, app = _hostile_venv(attacker)
    pid_file = os.path.join(attacker.pw_dir, "app.pid")
    # Nothing is mounted in it, so propagation stays as it is ("private" needs "/" to be a mount
    # point, which it is not in a chroot such as scripts/debian-check's).
    argv = ["unshare", "--mount", "--propagation", "unchanged", "setpriv", "--reuid=%d" % attacker.pw_uid,
            "--regid=%d" % attacker.pw_gid, "--clear-groups", python, app, pid_file]
    proc, pid = _start(attacker, argv, pid_file, tmp_path)
    try:
        done, took = _attach(pid, tmp_path)
        assert done.returncode == 0, done.stderr
        assert "another root" in done.stderr, done.stderr
        assert "agent injected" not in done.stderr
        assert proc.poll() is None
        _nothing_of_root(attacker, proofs)
    finally:
        proc.kill()
        proc.wait()
