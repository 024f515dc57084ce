"""Redaction by what a value is: every password hidden, nothing else (tracer/secrets.py)."""

import subprocess
import sys

import pytest

from trace_quit.tracer import events as ev
from trace_quit.tracer import secrets
from trace_quit.tracer.dsn import parse, redact as redact_dsn


@pytest.mark.parametrize("argv, shown", [
    (["app", "--db-password=hunter2"], ["app", "--db-password=***"]),
    (["app", "--mysql-pwd", "hunter2", "-v"], ["app", "--mysql-pwd", "***", "-v"]),
    (["app", "--MYSQL_PWD=hunter2"], ["app", "--MYSQL_PWD=***"]),
    (["mysql", "-phunter2", "-u", "bob"], ["mysql", "-p***", "-u", "bob"]),
    (["app", "--api-token", "t0k"], ["app", "--api-token", "***"]),
    (["app", "--dsn", "mysql://mon:ss@Mon9@127.0.0.1:3306/db"], ["app", "--dsn", "mysql://mon:***@127.0.0.1:3306/db"]),
    (["app", "--url=mysql+mysqldb://u@h/db?passwd=hunter2&charset=utf8"],
     ["app", "--url=mysql+mysqldb://u@h/db?passwd=***&charset=utf8"]),
    (["app", "mysql://u@h/db?ssl=1&password=hunter2"], ["app", "mysql://u@h/db?ssl=1&password=***"]),
    # The query's name percent-encoded, or spelled with a prefix; the value encoded.
    (["mysql://u@h/db?pass%77d=hunter2"], ["mysql://u@h/db?pass%77d=***"]),
    (["mysql://u@h/db?PASSWD=hunter2&x=1"], ["mysql://u@h/db?PASSWD=***&x=1"]),
    (["mysql://u@h/db?db_password=hunter2"], ["mysql://u@h/db?db_password=***"]),
    (["mysql://u@h/db?password=hun%26ter2+x"], ["mysql://u@h/db?password=***"]),
    (["mysql://u@h/db?passwd=a&passwd=hunter2"], ["mysql://u@h/db?passwd=***&passwd=***"]),
])
def test_every_password_is_hidden(argv, shown):
    assert ev.redact_argv is secrets.redact_argv  # one implementation, re-exported for the agent
    assert ev.redact_argv(argv) == shown
    assert "hunter2" not in " ".join(ev.redact_argv(argv)) and "Mon9" not in " ".join(ev.redact_argv(argv))


@pytest.mark.parametrize("argv", [
    ["pytest", "-p", "no:cacheprovider", "-q"],
    ["mysql", "-P", "3411", "-h", "db"],
    ["app", "--password-file", "/run/secrets/db"],
    ["app", "--password", "--verbose"],          # a bare flag (prompt): the next flag is not its value
    ["app", "--passes", "3", "https://example.org/a@b"],
    ["app", "--dsn", "mysql://root@localhost/"],
    ["app", "mysql://u@h/db?charset=utf8&password_file=/run/pw&passes=3"],
])
def test_nothing_else_is_hidden(argv):
    assert ev.redact_argv(argv) == argv


def test_a_dsn_with_at_in_its_password_parses_and_redacts_whole():
    dsn = "mysql://mon:ss@Mon9@127.0.0.1:3306/db"
    assert parse(dsn) == {"host": "127.0.0.1", "port": 3306, "user": "mon", "password": "ss@Mon9", "database": "db"}
    assert redact_dsn(dsn) == "mysql://mon:***@127.0.0.1:3306/db"
    assert redact_dsn("mysql://u:p@h/db?unix_socket=/s&pwd=x") == "mysql://u:***@h/db?unix_socket=/s&pwd=***"


def test_the_agents_copy_loads_by_path_without_our_package():
    """The agent loads events.py (and through it secrets.py) by path, stdlib only."""
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('_trace_quit_events', %r)\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "assert 'trace_quit' not in sys.modules and 'sqlalchemy' not in sys.modules\n"
            "print(m.redact_argv(['x', '--db-password=s', '-p', 'no:cacheprovider']))\n" % ev.__file__)
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "['x', '--db-password=***', '-p', 'no:cacheprovider']\n"


def test_the_tracer_does_not_import_workloads():
    out = subprocess.run([sys.executable, "-c", "import sys, trace_quit.tracer.record, trace_quit.tracer.sampler, "
                          "trace_quit.tracer.cli; print(sorted(m for m in sys.modules if 'workloads' in m))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"
