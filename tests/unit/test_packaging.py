"""A report-only install: the analysis needs no database driver, and installing it builds none."""

import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_drivers_are_the_workloads_extra_not_a_dependency():
    import tomllib  # the test venv is Python 3.11+; the package itself stays 3.8-compatible

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    names = [d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in project["dependencies"]]
    assert "mysqlclient" not in names and "sqlalchemy" not in names
    assert {"mysqlclient", "sqlalchemy"} <= {d.split(">")[0].strip().lower()
                                             for d in project["optional-dependencies"]["workloads"]}


def test_a_report_needs_no_driver(tmp_path):
    # MySQLdb and sqlalchemy made unimportable: loading, explaining and rendering a real capture still works.
    code = ("import sys, gzip, shutil\n"
            "sys.modules['MySQLdb'] = None; sys.modules['sqlalchemy'] = None\n"
            "from trace_quit.analysis import build_report, load, render\n"
            "with gzip.open(sys.argv[1], 'rb') as f, open(sys.argv[2], 'wb') as out: shutil.copyfileobj(f, out)\n"
            "r = build_report(load(sys.argv[2]))\n"
            "render(r, 'text'); render(r, 'json')\n"
            "print(r.com_quit.by_cause['gc'])\n")
    fixture = os.path.join(REPO, "tests", "unit", "data", "known-causes.tqcap.gz")
    out = subprocess.run([sys.executable, "-c", code, fixture, str(tmp_path / "kc.tqcap")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "18\n"
