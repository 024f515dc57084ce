"""``trace-quit doctor``: what works on this machine and what does not, with the fix for each.

The eBPF checks come from ``tracer/bpf/doctor.py`` (the only layer that imports bcc); this
module adds the Python side: the interpreter the program will use (``doctor -- python app.py``,
else the first ``python3`` on PATH) and its mysqlclient. Both sides check that same interpreter.
"""

import os
import shutil
import subprocess


def _shebang(path):
    """The interpreter of a script's ``#!`` line (``/usr/bin/env python3`` resolved on PATH), else None.

    The line is read by the tracer's own parser (tracer/bpf/command.py, no bcc needed)."""
    from trace_quit.tracer.bpf.command import _shebang as parse_shebang

    found = parse_shebang(path)
    if found is None:
        return None
    interp, arg = found
    if os.path.basename(interp) == "env" and arg:
        return shutil.which(arg.split()[0])
    return interp


def choose_python(command=None, python=None):
    """(interpreter, how it was chosen): --python, the command's Python, else python3 on PATH."""
    if python:
        return python, "--python"
    if command:
        exe = shutil.which(command[0]) or (command[0] if os.path.exists(command[0]) else None)
        if exe and os.path.basename(exe).startswith("python"):
            return exe, "the command's interpreter"
        interp = _shebang(exe) if exe else None
        if interp and os.path.basename(interp).startswith("python"):
            return interp, "the #! line of %s" % exe
    exe = shutil.which("python3") or shutil.which("python")
    return exe, "the first python3 on PATH"


def _python_checks(exe, how):
    checks = []
    if not exe:
        return [{"name": "python", "ok": False, "detail": "no python3 on PATH", "essential": True,
                 "fix": "name the program: trace-quit doctor -- python3 app.py"}]
    checks.append({"name": "python", "ok": True, "detail": "%s (%s)" % (exe, how), "essential": True})
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
                   else "Python %s cannot import MySQLdb (PyMySQL programs do not need it)" % version,
                   "fix": "pip install mysqlclient into the environment your program uses"})
    return checks


def run_checks(python=None, command=None):
    """Every check as {name, ok, detail, fix, essential[, more]}, about the Python the program will use."""
    exe, how = choose_python(command, python)
    checks = []
    try:
        from trace_quit.tracer.bpf import doctor as bpf_doctor

        checks.extend(bpf_doctor.checks(python=exe))
    except ImportError as exc:
        checks.append({"name": "bcc", "ok": False, "detail": "the eBPF layer cannot load: %s" % exc,
                       "fix": "run scripts/setup.sh (installs python3-bpfcc), or trace with --no-bpf"})
    checks[:0] = _python_checks(exe, how)  # first: every check below is about this interpreter
    for check in checks:
        check.setdefault("essential", True)
        check.setdefault("fix", "")
    return checks
