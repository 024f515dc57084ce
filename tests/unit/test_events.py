"""The event schema's helpers: passwords never reach a capture."""

from trace_quit.tracer import events as ev


def test_url_password_is_redacted():
    assert ev.redact("mysql://app:s3cret@db:3306/x") == "mysql://app:***@db:3306/x"
    assert ev.redact("--dsn=mysql+mysqldb://a:p%40ss@h/db?x=1") == "--dsn=mysql+mysqldb://a:***@h/db?x=1"


def test_password_flags_are_redacted():
    assert ev.redact_argv(["prog", "--password=hunter2", "-phunter2", "--password", "hunter2", "--user", "bob"]) == \
        ["prog", "--password=***", "-p***", "--password", "***", "--user", "bob"]


def test_text_without_password_is_unchanged():
    for text in ("mysql://app@db/x", "python", "main.py", "--port=3306"):
        assert ev.redact(text) == text


def test_encode_is_one_compact_line():
    line = ev.encode({"k": ev.CONN_OPEN, "t": 1, "conn": 2})
    assert line == '{"k":"conn_open","t":1,"conn":2}\n'
