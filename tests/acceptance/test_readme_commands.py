"""The README's commands, typed as a user types them: from a project directory of the user's.

An unprivileged user (made for this module, removed after) owns ``~/myproject``; every
command runs as that user in that directory, through the real ``sudo`` where the README
says ``sudo`` (a sudoers drop-in puts this checkout's ``trace-quit`` and a ``python`` with
SQLAlchemy and mysqlclient first on sudo's ``secure_path``). Each test asserts the program's
working directory, output and exit status, and that every file lands where the user named
it, owned by the user. ``test_every_readme_command_is_run`` ties the README's "Using it"
block to ``COMMANDS`` below, so the README cannot drift from what works.
"""

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import pytest

from tq_support import REPO

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.server]

README = os.path.join(REPO, "README.md")
VENV_BIN = os.path.join(REPO, ".venv", "bin")

#: Each README line (its comment cut) -> the test that runs it, with real arguments.
COMMANDS = {
    "sudo trace-quit -- python main.py": "test_headline_command_runs_in_the_project_directory",
    "sudo trace-quit -o run.tqcap --dsn mysql://mon:pw@127.0.0.1/app -- python main.py":
        "test_output_and_dsn_and_the_reports_made_from_them",
    "trace-quit --no-bpf -- python main.py": "test_no_bpf_without_sudo",
    "trace-quit report run.tqcap --format html -o run.html": "test_output_and_dsn_and_the_reports_made_from_them",
    "trace-quit report exp1.tqcap exp2.tqcap --format html -o compare.html":
        "test_output_and_dsn_and_the_reports_made_from_them",
    "sudo trace-quit --pid 4242 --duration 10m -o svc.tqcap": "test_pid_attach_writes_where_the_user_stands",
    "sudo trace-quit --pid 4242 --max-capture 200M -o svc.tqcap": "test_pid_attach_writes_where_the_user_stands",
    "sudo trace-quit --pid 4242 --no-agent -o svc.tqcap": "test_pid_attach_writes_where_the_user_stands",
    "trace-quit doctor -- python3 main.py": "test_doctor_and_dump_and_the_workloads_help",
    "sudo trace-quit demo [engine-per-call|shared-engine|nullpool-scoped|engine-per-call-gc-off|hidden-threads]":
        "test_demo_writes_into_the_project_directory",
    "sudo trace-quit demo shared-engine -- --tasks 100": "test_demo_writes_into_the_project_directory",
    "trace-quit dump run.tqcap": "test_doctor_and_dump_and_the_workloads_help",
    "python -m trace_quit.workloads NAME --help": "test_doctor_and_dump_and_the_workloads_help",
}

ENGINES = 5   # main.py: an Engine per call, each with one connection never closed; gc.collect() ends them

MAIN_PY = '''\
import configparser, gc, os, sys
import sqlalchemy as sa

config = configparser.ConfigParser()
with open("db.conf") as f:  # a relative data file: found only in the project directory
    config.read_file(f)


def get_connection():
    engine = sa.create_engine(config["db"]["url"])  # line 10: an Engine per call, never disposed
    return engine.connect()


for _ in range({engines}):
    conn = get_connection()
    conn.execute(sa.text("SELECT 1"))
    conn.close()
del conn  # the last Connection held its Engine: now every Engine is garbage, in a cycle
gc.collect()
print("cwd=%s uid=%d" % (os.getcwd(), os.getuid()))
sys.exit(3)
'''.format(engines=ENGINES)

PKG_MAIN = '''\
import os
print("pkg cwd=%s" % os.getcwd())
'''

SERVICE_PY = '''\
import os, sys, time
import sqlalchemy as sa

url = open("db.conf").read().split("url = ", 1)[1].strip()
print("ready", os.getpid(), flush=True)
while not os.path.exists("stop"):
    engine = sa.create_engine(url)  # line 6: an Engine per request
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    time.sleep(0.05)
print("svc cwd=%s" % os.getcwd(), flush=True)
'''

TEST_DB_PY = '''\
import sqlalchemy as sa


def test_query():
    url = open("db.conf").read().split("url = ", 1)[1].strip()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
'''


class User:
    """An unprivileged user with a project directory and sudo rights, as on a developer's machine."""

    def __init__(self, base, server):
        self.name = "tqa" + secrets.token_hex(3)
        self.root = tempfile.mkdtemp(prefix="tq-accept-", dir=base)
        os.chmod(self.root, 0o755)
        self.home = os.path.join(self.root, "home")
        # This checkout's venv first on the PATH, sudo's too: its trace-quit (what
        # /usr/local/bin/trace-quit links to after set-up) and a Python with SQLAlchemy and
        # mysqlclient as `python`, `python3` and `pytest`, like a project's activated venv.
        self.bin = VENV_BIN
        self.sudoers = "/etc/sudoers.d/trace-quit-%s" % self.name
        subprocess.run(["useradd", "--home-dir", self.home, "--create-home", "--shell", "/bin/bash",
                        "--user-group", self.name], check=True, capture_output=True)
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        secure = ":".join([self.bin, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        rules = ('Defaults:%s secure_path="%s"\nDefaults:%s !lecture\n%s ALL=(ALL) NOPASSWD: ALL\n'
                 % (self.name, secure, self.name, self.name))
        tmp = self.sudoers + ".tmp"
        with open(tmp, "w") as f:
            f.write(rules)
        os.chmod(tmp, 0o440)
        subprocess.run(["visudo", "-cf", tmp], check=True, capture_output=True)
        os.rename(tmp, self.sudoers)
        self.project = os.path.join(self.home, "myproject")
        url = "mysql+mysqldb://%s:%s@127.0.0.1:%d/%s" % (server.user, server.password, server.port, server.database)
        self.write("db.conf", "[db]\nurl = %s\n" % url)
        self.write("main.py", MAIN_PY)
        self.write("pkg/__init__.py", "")
        self.write("pkg/__main__.py", PKG_MAIN)
        self.write("svc.py", SERVICE_PY)
        self.write("tests/test_db.py", TEST_DB_PY)
        self.write("run_me.py", "#!/usr/bin/env python\n" + MAIN_PY, mode=0o755)

    def write(self, rel, text, mode=0o644):
        path = os.path.join(self.project, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        for d in (self.home, os.path.dirname(path), path):
            while True:
                os.chown(d, self.uid, self.gid)
                if d == self.home or os.path.dirname(d) == d:
                    break
                d = os.path.dirname(d)

    def env(self):
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "LANG": "C.UTF-8",
                "PATH": ":".join([self.bin, "/usr/local/bin", "/usr/bin", "/bin"])}

    def argv(self, command):
        """``command`` as the user types it in ~/myproject (a login-less bash)."""
        return ["runuser", "-u", self.name, "--", "env", "-i"] + ["%s=%s" % kv for kv in self.env().items()] + [
            "bash", "-c", "cd ~/myproject && " + command]

    def run(self, command, timeout=240):
        return subprocess.run(self.argv(command), capture_output=True, text=True, timeout=timeout)

    def start(self, command):
        return subprocess.Popen(self.argv(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def files(self, pattern=r".*"):
        return sorted(f for f in os.listdir(self.project) if re.fullmatch(pattern, f))

    def owned_private(self, rel):
        st = os.lstat(os.path.join(self.project, rel))
        return stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            self.uid, self.gid, 0o600)

    def remove(self):
        subprocess.run(["pkill", "-KILL", "-u", self.name], capture_output=True)
        for path in (self.sudoers, self.sudoers + ".tmp"):
            if os.path.exists(path):
                os.unlink(path)
        subprocess.run(["userdel", self.name], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def user(server):
    if shutil.which("sudo") is None or shutil.which("runuser") is None:
        pytest.skip("sudo or runuser is not installed (scripts/setup.sh installs sudo)")
    base = os.environ.get("TQ_SERVER_TMPDIR") or tempfile.gettempdir()
    u = User(base, server)
    try:
        yield u
    finally:
        u.remove()


def report_json(user, capture):
    proc = user.run("trace-quit report %s --format json" % capture)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def quits_logged(server, since):
    return sum(1 for _, cmd, _ in server.general_log(since) if cmd == "Quit")


def readme_commands():
    """The commands of the README's "Using it" block, comments cut."""
    with open(README) as f:
        text = f.read()
    block = re.search(r"^## Using it\n.*?^```sh\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no ```sh block under '## Using it'"
    lines = [re.split(r"\s+#\s", line)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_every_readme_command_is_run():
    assert set(readme_commands()) == set(COMMANDS), "README's 'Using it' block and COMMANDS differ"
    names = {name for name in globals() if name.startswith("test_")}
    assert set(COMMANDS.values()) <= names


def test_headline_command_runs_in_the_project_directory(user, server):
    since = server.general_log_size()
    proc = user.run("sudo trace-quit -- python main.py")
    assert proc.returncode == 3, proc.stderr            # the program's own exit status
    assert proc.stdout.splitlines() == ["cwd=%s uid=%d" % (user.project, user.uid)]
    captures = user.files(r"trace-quit-main\.\d+\.tqcap")
    assert len(captures) == 1 and user.owned_private(captures[0]), user.files()
    # The closing lines name the file where it is, as the user named it (no other place).
    assert "trace-quit: capture written to %s\n" % captures[0] in proc.stderr
    assert "could not be built" not in proc.stderr and "does not exist" not in proc.stderr
    report = report_json(user, captures[0])
    assert report["com_quit"]["by_cause"].get("gc") == ENGINES == quits_logged(server, since)
    assert report["program"]["exit_status"] == 3


def test_relative_output_html_module_and_shebang(user):
    proc = user.run("sudo trace-quit -o rel.tqcap --format html -- python main.py")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "cwd=%s uid=%d" % (user.project, user.uid)
    assert user.owned_private("rel.tqcap") and user.owned_private("rel.html")
    assert "trace-quit: HTML report: rel.html\n" in proc.stderr

    proc = user.run("sudo trace-quit -- python -m pkg")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pkg cwd=%s" % user.project
    assert len(user.files(r"trace-quit-pkg\.\d+\.tqcap")) == 1

    proc = user.run("sudo trace-quit -- ./run_me.py")   # through its shebang, #!/usr/bin/env python
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "cwd=%s uid=%d" % (user.project, user.uid)
    captures = user.files(r"trace-quit-run_me\.\d+\.tqcap")
    assert len(captures) == 1 and user.owned_private(captures[0])


def test_output_and_dsn_and_the_reports_made_from_them(user, server):
    dsn = "mysql://%s:%s@127.0.0.1:%d/%s" % (server.user, server.password, server.port, server.database)
    proc = user.run("sudo trace-quit -o run.tqcap --dsn %s -- python main.py" % dsn)
    assert proc.returncode == 3, proc.stderr
    assert user.owned_private("run.tqcap")
    report = report_json(user, "run.tqcap")
    assert report["layers"]["sampler"] is True
    with open(os.path.join(user.project, "run.tqcap")) as f:
        assert server.password not in f.read()

    proc = user.run("trace-quit report run.tqcap --format html -o run.html")
    assert proc.returncode == 0, proc.stderr
    assert user.owned_private("run.html")

    for name in ("exp1", "exp2"):
        assert user.run("cp run.tqcap %s.tqcap" % name).returncode == 0
    proc = user.run("trace-quit report exp1.tqcap exp2.tqcap --format html -o compare.html")
    assert proc.returncode == 0, proc.stderr
    assert user.owned_private("compare.html")
    with open(os.path.join(user.project, "compare.html")) as f:
        page = f.read()
    assert "exp1.tqcap" in page and "exp2.tqcap" in page


def test_no_bpf_without_sudo(user):
    before = set(user.files(r"trace-quit-main\.\d+\.tqcap"))
    proc = user.run("trace-quit --no-bpf -- python main.py")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "cwd=%s uid=%d" % (user.project, user.uid)
    new = set(user.files(r"trace-quit-main\.\d+\.tqcap")) - before
    assert len(new) == 1 and user.owned_private(new.pop())


def test_pytest_plugin_with_a_relative_capture(user):
    proc = user.run("pytest -q -p no:cacheprovider --trace-quit-capture tests.tqcap tests/test_db.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    path = os.path.join(user.project, "tests.tqcap")
    st = os.stat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == user.uid
    proc = user.run("trace-quit dump tests.tqcap")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["cwd"] == user.project


@pytest.mark.parametrize("options, output", [
    ("--duration 4s", "svc.tqcap"),
    ("--max-capture 200M", "svc-bounded.tqcap"),
    ("--no-agent", "svc-kernel.tqcap"),
])
def test_pid_attach_writes_where_the_user_stands(user, options, output):
    stop = os.path.join(user.project, "stop")
    if os.path.exists(stop):
        os.unlink(stop)
    service = user.start("exec python svc.py")
    try:
        ready, pid = service.stdout.readline().split()
        assert ready == "ready"
        tracer = user.start("sudo trace-quit --pid %s %s -o %s" % (pid, options, output))
        if "--duration" not in options:
            time.sleep(5)       # the service runs on, traced; then it ends, and so does the attach
            user.run("touch stop")
        out, err = tracer.communicate(timeout=180)
        assert tracer.returncode == 0, err
        assert user.owned_private(output), (user.files(), err)
        assert "trace-quit: capture written to %s\n" % output in err
        if "--duration" in options:
            assert service.poll() is None     # the service goes on after the attach
            user.run("touch stop")
        svc_out, svc_err = service.communicate(timeout=30)
        assert service.returncode == 0, svc_err
        assert svc_out.strip() == "svc cwd=%s" % user.project
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGKILL)
            service.wait()


def test_doctor_and_dump_and_the_workloads_help(user):
    proc = user.run("trace-quit doctor -- python3 main.py")
    assert proc.returncode in (0, 1), proc.stderr   # 1: something it checked is missing (said)
    assert "main.py" in proc.stdout + proc.stderr or "python" in proc.stdout
    if not os.path.exists(os.path.join(user.project, "run.tqcap")):
        assert user.run("sudo trace-quit -o run.tqcap -- python main.py").returncode == 3
    proc = user.run("trace-quit dump run.tqcap")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sum(1 for r in records if r.get("k") == "engine_create") == ENGINES
    proc = user.run("python -m trace_quit.workloads engine-per-call --help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr


def test_demo_writes_into_the_project_directory(user):
    """Both demo lines: the one with an experiment named and its workload options (the full-size
    default runs in tests/system/test_demo.py)."""
    proc = user.run("sudo trace-quit demo shared-engine -- --tasks 100", timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert user.owned_private("trace-quit-demo/shared-engine.tqcap")
    assert user.owned_private("trace-quit-demo/shared-engine.html")


def test_the_checkout_is_what_sudo_runs(user):
    """sudo's secure_path finds this checkout's trace-quit first (else the tests test another one)."""
    proc = user.run("sudo sh -c 'command -v trace-quit'")
    assert proc.returncode == 0 and os.path.realpath(proc.stdout.strip()) == os.path.realpath(
        os.path.join(VENV_BIN, "trace-quit"))


COMPILE_WATCH = '''\
import os, time
from trace_quit.tracer.bpf import compile as program
start = os.getcwd()
program.start_compile()
job = program._early["job"]
seen = set()
while job["thread"].is_alive():
    seen.add(os.getcwd())
    time.sleep(0.0005)
print(job["error"] is None and job["bpf"] is not None, start, sorted(seen - {start}))
'''


def test_compiling_the_probes_never_moves_the_working_directory(user):
    """bcc's compile chdir()s into the kernel headers; while trace-quit resolved the command and
    started the program beside it, that was the program's directory too. The compile now runs on
    a thread with a directory of its own (tracer/bpf/compile.py, _own_working_directory)."""
    user.write("watch_compile.py", COMPILE_WATCH)
    proc = user.run("sudo python watch_compile.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True %s []" % user.project, proc.stdout
