"""The create_engine() call chain: a shared helper (config/database.py:get_session) does not hide
the program's code that called it (issue 16). Two callers of the same helper are two groups."""

import json
import subprocess
import textwrap

import pytest

from tq_support import TRACE_QUIT, run_traced

pytestmark = pytest.mark.server

FILES = {
    "config/__init__.py": "",
    "config/database.py": """\
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session


        def get_session(url):
            engine = create_engine(url)  # line 6: an Engine per call, never disposed
            return Session(engine)
        """,
    "app/__init__.py": "",
    "app/worker.py": """\
        from sqlalchemy import text

        from config.database import get_session


        def handle(url):
            session = get_session(url)  # line 7
            session.execute(text("SELECT 1"))
            session.close()
        """,
    "app/health.py": """\
        from sqlalchemy import text

        from config.database import get_session


        def ping(url):
            session = get_session(url)  # line 7
            session.execute(text("SELECT 1"))
            session.close()
        """,
    "main.py": """\
        import sys

        from app import health, worker

        for _ in range(5):
            worker.handle(sys.argv[1])
        for _ in range(2):
            health.ping(sys.argv[1])
        """,
}


def test_report_names_the_callers_of_a_shared_create_engine_helper(server, tmp_path):
    from trace_quit.workloads.dsn import sqlalchemy_url

    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
    python = __import__("sys").executable
    proc, capture = run_traced(tmp_path, [python, "main.py", sqlalchemy_url(server.dsn_tcp)])
    assert proc.returncode == 0, proc.stderr
    creates = [json.loads(line) for line in open(capture) if '"k":"engine_create"' in line]
    assert len(creates) == 7
    assert creates[0]["chain"][:3] == ["%s/config/database.py:6 in get_session" % tmp_path,
                                       "%s/app/worker.py:7 in handle" % tmp_path,
                                       "%s/main.py:6 in <module>" % tmp_path]

    report = json.loads(subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True,
                                       text=True, cwd=str(tmp_path), timeout=60, check=True).stdout)
    groups = [(e["call_site"], e["chain"], e["created"], e["connections"]) for e in report["engines"]]
    assert groups == [
        ("config/database.py:6 in get_session",
         ["main.py:6 in <module>", "app/worker.py:7 in handle", "config/database.py:6 in get_session"], 5, 5),
        ("config/database.py:6 in get_session",
         ["main.py:8 in <module>", "app/health.py:7 in ping", "config/database.py:6 in get_session"], 2, 2),
    ]
    text = subprocess.run(TRACE_QUIT + ["report", capture], capture_output=True, text=True, cwd=str(tmp_path),
                          timeout=60, check=True, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"}).stdout
    head = " ".join(" ".join(text.splitlines()[:25]).split())
    assert ("create_engine() ran 5 times at config/database.py:6 in get_session (called from "
            "app/worker.py:7 in handle ← main.py:6 in <module>)") in head
    subprocess.run(TRACE_QUIT + ["report", capture, "--format", "html", "-o", "r.html"], cwd=str(tmp_path),
                   timeout=60, check=True, capture_output=True)
    html = (tmp_path / "r.html").read_text()
    assert "<small>(called from app/worker.py:7 in handle ← main.py:6 in &lt;module&gt;)</small>" in html
    assert "<small>(called from app/health.py:7 in ping ← main.py:8 in &lt;module&gt;)</small>" in html


GC_PROGRAM = {
    "vendor/site-packages/fakelib.py": """\
        import gc
        def collect():
            gc.collect(1)  # line 3: library code sets the collection off
        """,
    "main.py": """\
        import sys
        sys.path.insert(0, "vendor/site-packages")
        import MySQLdb
        import fakelib
        from trace_quit.workloads import dsn
        conn = MySQLdb.connect(**dsn.parse(sys.argv[1]))
        conn.me = conn  # a reference cycle: only a collection ends it
        del conn
        fakelib.collect()  # line 9
        """,
}


def test_a_collection_set_off_in_library_code_names_the_programs_frame(server, tmp_path):
    for name, text in GC_PROGRAM.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    proc, capture = run_traced(tmp_path, [__import__("sys").executable, "main.py", server.dsn_tcp])
    assert proc.returncode == 0, proc.stderr
    starts = [json.loads(line) for line in open(capture) if '"k":"gc_start"' in line]
    ours = [e for e in starts if e["site"].endswith("fakelib.py:3")]
    assert len(ours) == 1 and ours[0]["gen"] == 1
    assert ours[0]["app_site"] == "%s/main.py:9" % tmp_path
    report = json.loads(subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True,
                                       text=True, cwd=str(tmp_path), timeout=60, check=True).stdout)
    closing = report["gc"]["that_closed_connections"]
    assert [(c["generation"], c["connections"], c["triggered_at"]) for c in closing] == [(1, 1, "main.py:9")]
