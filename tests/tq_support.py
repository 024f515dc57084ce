"""Helpers shared by the test layers: run the real CLI, read captures, find test interpreters."""

import collections
import glob
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(REPO, ".venv", "bin", "python")
TRACE_QUIT = [sys.executable, "-m", "trace_quit.tracer.cli"]
AGENT_VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15")


def venv_python_for(version):
    """The interpreter of the test venv for ``version`` that scripts/setup.sh builds."""
    return os.path.join(REPO, ".venvs", "py" + version, "bin", "python")


# --- which CPythons this machine has (the same rule as scripts/setup.sh's test venvs) --------

def pyenv_root():
    """pyenv's root as scripts/setup.sh finds it: $PYENV_ROOT (even an empty directory), else ~/.pyenv."""
    root = os.environ.get("PYENV_ROOT")
    if root is not None:
        return root
    for home in (os.path.expanduser("~"), "/root"):
        if os.path.isdir(os.path.join(home, ".pyenv", "versions")):
            return os.path.join(home, ".pyenv")
    return None


def _newest_pyenv(version):
    root = pyenv_root()
    if not root:
        return None
    pattern = re.compile(r"^%s\.(\d+)$" % re.escape(version))
    found = []
    for path in glob.glob(os.path.join(root, "versions", version + ".*")):
        m = pattern.match(os.path.basename(path))
        if m and os.access(os.path.join(path, "bin", "python"), os.X_OK):
            found.append((int(m.group(1)), os.path.join(path, "bin", "python")))
    return max(found)[1] if found else None


def cpython_for(version):
    """(interpreter, "pyenv"|"system") scripts/setup.sh builds .venvs/pyX.Y from, or None.

    pyenv's newest X.Y.N first (a shared libpython with .symtab: GC brackets from symbols),
    else the distribution's /usr/bin/pythonX.Y (USDT), e.g. on Debian 13, which has no pyenv."""
    py = _newest_pyenv(version)
    if py:
        return py, "pyenv"
    system = "/usr/bin/python" + version
    if os.access(system, os.X_OK):
        return system, "system"
    return None


def cpython_matrix():
    """{version: (interpreter, kind)} for every supported CPython present on this machine."""
    return {v: found for v in AGENT_VERSIONS for found in [cpython_for(v)] if found}


def venv_base(version):
    """(interpreter, "pyenv"|"system") the test venv for ``version`` was actually built from
    (its pyvenv.cfg home), or None: what a test expects of it (symbols or USDT) follows the venv."""
    try:
        with open(os.path.join(REPO, ".venvs", "py" + version, "pyvenv.cfg")) as f:
            cfg = {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in f if "=" in line)}
    except OSError:
        return None
    home = cfg.get("home", "").strip()
    return os.path.join(home, "python" + version), ("system" if home in ("/usr/bin", "/bin") else "pyenv")


def required_cpythons():
    """Versions that must be present ($TQ_REQUIRE_CPYTHONS, e.g. "3.8 3.13" on a known CI image)."""
    return os.environ.get("TQ_REQUIRE_CPYTHONS", "").split()


def cpython_param(version, *rest):
    """A pytest param for one CPython version, marked so conftest leaves it out (and says so)
    where this machine has no such CPython; the test id contains ``pyX.Y``."""
    import pytest

    return pytest.param(version, *rest, marks=pytest.mark.cpython(version), id="py" + version)


def bcc_free_python():
    """A Python with trace-quit installed but not bcc: any test venv (none sees system site packages)."""
    found = sorted(glob.glob(os.path.join(REPO, ".venvs", "*", "bin", "python")))
    return next((py for py in found if os.access(py, os.X_OK)), None)


# --- the system's interpreter and the client library's probe site ---------------------------

def system_python():
    """The distribution's interpreter the project venv was made from (Debian 12: python3.11,
    Debian 13: python3.13): pyvenv.cfg's home + version, else /usr/bin/python3 resolved."""
    cfg = {}
    try:
        with open(os.path.join(REPO, ".venv", "pyvenv.cfg")) as f:
            for line in f:
                key, _, value = line.partition("=")
                cfg[key.strip()] = value.strip()
    except OSError:
        pass
    version = cfg.get("version") or cfg.get("version_info") or ""
    m = re.match(r"(\d+\.\d+)", version)
    if cfg.get("home") and m:
        candidate = os.path.join(cfg["home"], "python" + m.group(1))
        if os.access(candidate, os.X_OK):
            return candidate
    return os.path.realpath("/usr/bin/python3")


def expected_close_site(code):
    """Where the probe on ``mysql_close`` belongs, worked out from the function's first bytes.

    Independent of the tracer's decoder, for the prologues the client libraries have:
    an optional ``endbr64`` (CET builds such as Debian 13's libmariadb3), then either the
    frame's first ``push`` or ``test %rdi,%rdi; je`` (the NULL check) followed by it: the site
    is that push (Debian 12: +9; Debian 13: +13), or the entry if the shape is anything else."""
    at = 4 if code[:4] == b"\xf3\x0f\x1e\xfa" else 0
    if code[at:at + 3] == b"\x48\x85\xff":
        at += 3
        if code[at] == 0x74:
            at += 2
        elif code[at:at + 2] == b"\x0f\x84":
            at += 6
        else:
            return 0
    push_r12_to_r15 = (b"\x41\x54", b"\x41\x55", b"\x41\x56", b"\x41\x57")
    return at if 0x50 <= code[at] <= 0x57 or code[at:at + 2] in push_r12_to_r15 else 0


def run_traced(tmp_path, argv, *, bpf=False, extra=(), env=None, timeout=300, name="run"):
    """Run ``trace-quit [--no-bpf] -o CAPTURE -- argv``; return (completed process, capture path)."""
    capture = str(tmp_path / (name + ".tqcap"))
    cmd = TRACE_QUIT + ["--format", "none", "--quiet", "-o", capture]
    if not bpf:
        cmd.append("--no-bpf")
    cmd += list(extra) + ["--"] + list(argv)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp_path))
    return proc, capture


#: The real captures the unit tests read (gzipped), and their golden reports.
FIXTURE_DATA = os.path.join(REPO, "tests", "unit", "data")
FIXTURES = sorted(n[:-len(".gz")] for n in os.listdir(FIXTURE_DATA) if n.endswith(".tqcap.gz"))


def tls_server(directory):
    """A DisposableServer (not started) that requires nothing but offers TLS with a self-signed
    certificate made in ``directory``; its ``tls_cert`` is the CA file a client verifies with."""
    from trace_quit.workloads.server import DisposableServer

    cert, key = os.path.join(str(directory), "cert.pem"), os.path.join(str(directory), "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    server = DisposableServer(extra_args=["--ssl-cert=" + cert, "--ssl-key=" + key])
    server.tls_cert = cert
    return server


def fixture_path(tmp_path, name):
    """Fixture capture ``name`` ("known-causes.tqcap") unpacked into ``tmp_path``: its path."""
    import gzip

    path = os.path.join(str(tmp_path), name)
    with gzip.open(os.path.join(FIXTURE_DATA, name + ".gz"), "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    return path


def load_fixture(tmp_path, name):
    """Fixture capture ``name`` as the analysis reads it (typed records)."""
    from trace_quit.analysis.capture import load

    return load(fixture_path(tmp_path, name))


def load_events(capture):
    """The capture as read, its events as the tracer wrote them (checked dicts, every key)."""
    from trace_quit.analysis.capture import load

    return load(capture, raw=True)


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


def report_json(capture, tmp_path):
    """The JSON report of ``capture`` through the real CLI (``report --format json -o``)."""
    import json
    import subprocess

    out = tmp_path / "report.json"
    proc = subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        return json.load(f)


def read_terminal(fd, proc, timeout=60):
    """Everything a pseudo-terminal's master ``fd`` reads until ``proc`` ends (or ``timeout``), as text."""
    import select
    import time

    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out.decode("utf-8", "replace")
