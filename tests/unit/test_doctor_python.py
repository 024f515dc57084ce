"""doctor checks the Python the user will trace: a script's #! line names it (tracer/doctor.py)."""

import os
import shutil

from trace_quit.tracer import doctor


def _script(tmp_path, line):
    path = tmp_path / "app"
    path.write_text(line + "\nprint(1)\n")
    os.chmod(path, 0o755)
    return str(path)


def test_a_scripts_shebang_names_the_python_directly_or_through_env(tmp_path):
    direct = _script(tmp_path, "#!/opt/py/bin/python3.12 -u")
    assert doctor.choose_python([direct]) == ("/opt/py/bin/python3.12", "the #! line of %s" % direct)
    via_env = _script(tmp_path, "#!/usr/bin/env python3")
    assert doctor.choose_python([via_env]) == (shutil.which("python3"), "the #! line of %s" % via_env)
    plain = _script(tmp_path, "echo not python")
    assert doctor.choose_python([plain])[1] == "the first python3 on PATH"
