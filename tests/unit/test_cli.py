"""The command line's contract: usage errors are one line with a distinct exit code."""

import os
import re

import pytest

from trace_quit.tracer import cli
from trace_quit.tracer.commands.common import html_path_for
from trace_quit.tracer.commands.run import default_capture_name
from trace_quit.tracer.launch import exit_status


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == "trace-quit 0.1.0"


@pytest.mark.parametrize("argv, code, message", [
    ((), 2, "usage: trace-quit"),
    (("python3", "main.py"), 2, "put -- between"),
    (("--no-bpf", "--"), 2, "no program to trace"),
    (("--no-bpf", "--", "no-such-command-xyz"), 127, "command not found"),
    (("--no-bpf", "--", "/etc/passwd"), 126, "not an executable"),
    (("--no-bpf", "--no-agent", "--", "true"), 2, "leave nothing to trace"),
    (("report", "/no/such/file"), 66, "no such capture file"),
    (("report", "/etc/passwd"), 65, "not a trace-quit capture"),
])
def test_bad_input_is_one_line_with_its_own_exit_code(capsys, argv, code, message):
    got, _, err = run_cli(capsys, *argv)
    assert got == code
    assert message in err
    assert "Traceback" not in err


def test_not_root_suggests_no_bpf(capsys, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, _, err = run_cli(capsys, "--", "true")
    assert code == 77
    assert "sudo" in err and "--no-bpf" in err and len(err.strip().splitlines()) == 1


def test_existing_capture_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "x.tqcap"
    out.write_text("precious")
    code, _, err = run_cli(capsys, "--no-bpf", "-o", str(out), "--", "true")
    assert code == 73 and "--force" in err
    assert out.read_text() == "precious"


@pytest.mark.parametrize("argv, program", [
    (["python", "main.py"], "main"),
    (["python3", "-u", "app/server.py", "--port", "1"], "server"),
    (["python", "-m", "pkg.worker"], "worker"),
    (["python", "-c", "pass"], "python"),
    (["/usr/bin/env"], "env"),
])
def test_default_capture_name_names_the_program(argv, program):
    name = default_capture_name(argv)
    assert re.fullmatch(r"trace-quit-%s\.\d+\.tqcap" % re.escape(program), name)


def test_exit_status_follows_the_shell_convention():
    assert exit_status(7 << 8) == 7
    assert exit_status(15) == 143  # killed by SIGTERM


def test_report_files_are_private_and_never_clobbered(capsys, tmp_path):
    import synth

    capture = synth.known_causes(str(tmp_path / "kc.tqcap"))
    for fmt in ("html", "json", "text"):
        out = tmp_path / ("report." + fmt)
        code, _, err = run_cli(capsys, "report", capture, "--format", fmt, "-o", str(out))
        assert code == 0, err
        assert os.stat(out).st_mode & 0o777 == 0o600
        code, _, err = run_cli(capsys, "report", capture, "--format", fmt, "-o", str(out))
        assert code == 73 and "--force" in err
    assert '"schema": "trace-quit/report/1"' in (tmp_path / "report.json").read_text()


@pytest.mark.parametrize("value", ["12Q", "-1G", "lots", "inf", "nan", "-inf", "1e30"])
def test_a_bad_max_capture_is_one_argparse_error(capsys, value):
    code, _, err = run_cli(capsys, "--no-bpf", "--max-capture=" + value, "--", "true")
    assert code == 2
    assert "--max-capture" in err and ("is not a size" in err or "cannot be negative" in err)
    assert "Traceback" not in err


@pytest.mark.parametrize("option, value", [("--duration", "nan"), ("--duration", "inf"), ("--duration", "nanm"),
                                           ("--metrics-linger", "nan"), ("--metrics-linger", "-1"),
                                           ("--inject-timeout", "inf")])
def test_a_number_that_never_ends_is_one_argparse_error(capsys, option, value):
    # --duration nan compared false with every clock reading: the trace never ended.
    code, _, err = run_cli(capsys, "--pid", "1", option + "=" + value)
    assert code == 2
    assert option in err and "Traceback" not in err


def test_the_html_page_never_overwrites_its_capture(tmp_path):
    assert html_path_for("run.tqcap") == "run.html"
    assert html_path_for("run.html") == "run.report.html"
    assert html_path_for(str(tmp_path / "a.b.html")) == str(tmp_path / "a.b.report.html")


def test_a_report_never_replaces_the_capture_it_explains(capsys, tmp_path):
    import synth

    capture = synth.known_causes(str(tmp_path / "kc.html"))  # a capture named like a page
    before = open(capture, "rb").read()
    code, _, err = run_cli(capsys, "report", capture, "--format", "html", "-o", capture, "--force")
    assert code == 73 and "is the capture being reported" in err
    code, _, err = run_cli(capsys, "report", capture, "--format", "html", "--force")
    assert code == 0, err
    assert open(capture, "rb").read() == before
    assert (tmp_path / "kc.report.html").exists()
