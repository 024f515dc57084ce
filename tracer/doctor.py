"""``trace-quit doctor``: what works on this machine and what does not, with the fix for each.

The eBPF checks come from ``tracer/bpf/doctor.py`` (the only layer that imports bcc); this
module adds the Python side: the interpreter a program would use and its mysqlclient.
"""

import os
import shutil
import subprocess


def _python_checks(python):
    checks = []
    exe = python or shutil.which("python3") or shutil.which("python")
    if not exe:
        return [{"name": "python", "ok": False, "detail": "no python3 on PATH", "essential": False,
                 "fix": "pass --python PATH to check the interpreter your program uses"}]
    checks.append({"name": "python", "ok": True, "detail": exe})
    probe = ("import importlib.util as u, sys; s = u.find_spec('MySQLdb'); "
             "print(sys.version.split()[0]); print(s.origin if s else '')")
    try:
        out = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=20).stdout.split("\n")
        version, origin = out[0], out[1]
    except (OSError, subprocess.TimeoutExpired, IndexError) as exc:
        return checks + [{"name": "mysqlclient", "ok": False, "detail": str(exc), "essential": False,
                          "fix": "check that %s runs" % exe}]
    checks.append({"name": "mysqlclient", "ok": bool(origin), "essential": False,
                   "detail": ("Python %s: %s" % (version, os.path.dirname(origin))) if origin
                   else "Python %s cannot import MySQLdb" % version,
                   "fix": "pip install mysqlclient into the environment your program uses"})
    return checks


def run_checks(python=None):
    """Every check as {name, ok, detail, fix, essential}."""
    checks = []
    try:
        from trace_quit.tracer.bpf import doctor as bpf_doctor

        checks.extend(bpf_doctor.checks(python=python))
    except ImportError as exc:
        checks.append({"name": "bcc", "ok": False, "detail": "the eBPF layer cannot load: %s" % exc,
                       "fix": "run scripts/setup.sh (installs python3-bpfcc), or trace with --no-bpf"})
    checks.extend(_python_checks(python))
    for check in checks:
        check.setdefault("essential", True)
        check.setdefault("fix", "")
    return checks
