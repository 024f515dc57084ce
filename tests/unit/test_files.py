"""The one safe writer: private, owned, never through a symlink, never clobbering, never partial."""

import gzip
import os
import stat
import subprocess
import sys

import pytest

from trace_quit.tracer import cli
from trace_quit.tracer.errors import EX_CANTCREAT, EX_DATAERR, OutputError, OutputExistsError
from trace_quit.tracer.files import write_private

REAL = os.path.join(os.path.dirname(__file__), "data", "known-causes.tqcap.gz")


def test_write_private_is_0600_and_whole(tmp_path):
    path = tmp_path / "r.html"
    os.umask(0o022)
    write_private(str(path), "héllo")
    assert path.read_bytes() == "héllo".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["r.html"]  # no temporary file left beside it


def test_write_private_refuses_an_existing_file_or_link_without_force(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "r.html"
    link.symlink_to(victim)
    with pytest.raises(OutputExistsError) as exc:
        write_private(str(link), "new")
    assert exc.value.exit_code == EX_CANTCREAT
    dangling = tmp_path / "d.html"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError):
        write_private(str(dangling), "new")
    assert not (tmp_path / "nowhere").exists()
    write_private(str(link), "new", force=True)  # replaces the link itself, never its target
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "new"


def test_write_private_into_a_missing_directory_is_one_line(tmp_path):
    with pytest.raises(OutputError) as exc:
        write_private(str(tmp_path / "no" / "such" / "r.html"), "x")
    assert str(exc.value) == "cannot write %s: no directory %s (create it, or choose another -o)" % (
        tmp_path / "no" / "such" / "r.html", tmp_path / "no" / "such")


def test_analysis_render_to_a_path_uses_the_safe_writer(tmp_path):
    from trace_quit import analysis
    from trace_quit.analysis.capture import load

    plain = tmp_path / "known-causes.tqcap"
    with gzip.open(REAL, "rb") as f:
        plain.write_bytes(f.read())
    report = analysis.build_report(load(str(plain)))
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    out = tmp_path / "r.txt"
    out.symlink_to(victim)
    with pytest.raises(OutputExistsError):
        analysis.render(report, "text", path=str(out))
    text = analysis.render(report, "text", path=str(out), force=True)
    assert victim.read_text() == "keep me"
    assert out.read_text() == text and stat.S_IMODE(out.stat().st_mode) == 0o600


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_output_in_a_missing_directory_is_one_line_with_its_code(capsys, tmp_path):
    """It was "internal error … please report it" (70): a bare re-raise came before the specific clauses."""
    path = str(tmp_path / "no" / "such" / "x.tqcap")
    code, _, err = run_cli(capsys, "--no-bpf", "-o", path, "--", "true")
    assert code == EX_CANTCREAT
    assert err == "trace-quit: cannot write %s: no directory %s (create it, or choose another -o)\n" % (
        path, os.path.dirname(path))


def test_the_recorder_raises_the_same_error_and_runs_nothing(tmp_path):
    from trace_quit.tracer.record import Recorder, RunOptions

    marker = tmp_path / "ran"
    rec = Recorder(RunOptions(argv=[sys.executable, "-c", "open(%r, 'w')" % str(marker)],
                              output=str(tmp_path / "no" / "x.tqcap"), bpf=False, status=False))
    with pytest.raises(OutputError):
        rec.run()
    assert rec.child.status == 125 and not marker.exists()
    assert not os.path.exists(rec.channel.dir)


@pytest.mark.parametrize("command", ["report", "dump"])
def test_report_or_dump_of_a_fifo_is_refused_in_one_line(command, tmp_path):
    fifo = tmp_path / "x.tqcap"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "trace_quit.tracer.cli", command, str(fifo)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EX_DATAERR
    assert proc.stderr == "trace-quit: %s is a FIFO, not a capture file: give the .tqcap file trace-quit wrote\n" % fifo


def test_run_format_html_obeys_force(capsys, tmp_path):
    capture = tmp_path / "x.tqcap"
    page = tmp_path / "x.html"
    page.write_text("someone's page")
    marker = tmp_path / "ran"
    code, _, err = run_cli(capsys, "--no-bpf", "--quiet", "--format", "html", "-o", str(capture), "--",
                           sys.executable, "-c", "open(%r, 'w')" % str(marker))
    assert code == EX_CANTCREAT
    assert err == "trace-quit: %s exists: choose another -o, or add --force to overwrite it\n" % page
    assert page.read_text() == "someone's page" and not marker.exists() and not capture.exists()
    code, _, err = run_cli(capsys, "--no-bpf", "--quiet", "--force", "--format", "html", "-o", str(capture), "--",
                           sys.executable, "-c", "open(%r, 'w')" % str(marker))
    assert code == 0, err
    assert page.read_text().startswith("<!DOCTYPE html>") and stat.S_IMODE(page.stat().st_mode) == 0o600


def test_a_capture_named_like_math_text_renders_and_a_failed_render_leaves_nothing(tmp_path, monkeypatch):
    """`x$\\frac$.tqcap` crashed matplotlib's math text and left a 0-byte page that blocked a rerun."""
    from trace_quit import analysis
    from trace_quit.analysis import render_html
    from trace_quit.analysis.capture import load

    capture = tmp_path / "x$\\frac$.tqcap"
    with gzip.open(REAL, "rb") as f:
        capture.write_bytes(f.read())
    page = tmp_path / "x$\\frac$.html"
    code = cli.main(["report", str(capture), "--format", "html", "-o", str(page)])
    assert code == 0
    assert "x$\\frac$" in page.read_text()

    report = analysis.build_report(load(str(capture)))
    monkeypatch.setattr(render_html, "render", lambda reports: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        analysis.render(report, "html", path=str(tmp_path / "broken.html"))
    assert sorted(os.listdir(tmp_path)) == sorted([capture.name, page.name])
