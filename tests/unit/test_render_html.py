"""The HTML report: one self-contained offline page, escaped, with the timeline plot; it renders in Chromium."""

import os
import re
import shutil
import subprocess

import pytest

from trace_quit.analysis import build_report, load, render
from synth import SynthCapture, engine_per_call, known_causes
from trace_quit.tracer import events as ev


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("h") / "epc.tq")
    engine_per_call(path)
    return build_report(load(path))


def test_page_is_self_contained_and_offline(study):
    html = render(study, "html")
    assert html.startswith("<!DOCTYPE html>")
    assert "<svg" in html and html.count("<svg") == 1
    assert "<script" not in html.lower() and "<link" not in html.lower()
    # No fetch of any kind: every http(s) URL is an XML namespace or a doctype inside the SVG.
    for url in re.findall(r"https?://[^\s\"'<>)]+", html):
        assert url.startswith(("http://www.w3.org/", "https://matplotlib.org/", "http://purl.org/",
                               "http://creativecommons.org/")), url
    assert re.search(r"(src|href)\s*=\s*\"https?:", html) is None
    assert "default-src 'none'" in html


def test_page_carries_the_explanation(study):
    html = render(study, "html")
    for text in ("a generation-2 collection on thread ThreadPoolExecutor-0_3 (10,575 objects) destroyed 83",
                 "a generation-1 collection every ~6.5 s destroys ~33 connections",
                 "config/database.py:22 in get_db_session", "create_engine() ran 500 times",
                 "Create the Engine once", "162 → 79"):
        assert text in html, text


def test_capture_strings_are_escaped(tmp_path):
    s = SynthCapture(str(tmp_path / "x.tq"), argv=["python", "<script>alert(1)</script>"])
    c = s.open(0.1, stack=["/srv/app/<img src=x onerror=alert(2)>.py:1 in f"])
    s.close(0.2, c, ev.REFCOUNT)
    s.finish(0.5)
    html = render(build_report(load(s.path)), "html")
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "<img src=x" not in html


def test_comparison_page_puts_captures_side_by_side(study, tmp_path):
    kc = build_report(load(known_causes(str(tmp_path / "kc.tq"))))
    html = render([study, kc], "html")
    assert html.count("<svg") == 3 and "Side by side" in html  # an overlay, then one plot per capture
    assert "epc.tq (max 214)" in html and "kc.tq (max 18)" in html
    assert "epc.tq" in html and "kc.tq" in html
    assert "repeat(2, minmax(520px, 1fr))" in html


def test_odd_values_still_render(tmp_path):
    s = SynthCapture(str(tmp_path / "o.tq"))
    c = s.open(0.1)
    s.emit({"k": ev.CONN_DESTROY, "t": s.ns(0.2), "src": "agent", "pid": s.pid, "tid": s.pid, "conn": c, "cause": "gc",
            "gen": 7, "cid": None})
    s.emit({"k": ev.CONN_OPEN, "t": s.ns(1e6), "src": "agent", "pid": s.pid, "tid": s.pid, "conn": 5, "stack": []})
    s.finish(1e6 + 1)
    r = build_report(load(s.path))
    assert r.com_quit.gc_by_generation["7"] == 1
    assert "<svg" in render(r, "html")


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_renders_in_headless_chromium_with_the_plot(study, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH: cannot screenshot the HTML report (apt-get install chromium)")
    page = tmp_path / "report.html"
    render(study, "html", path=str(page))
    png = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--user-data-dir=%s" % (tmp_path / "profile"), "--window-size=1280,1600", "--hide-scrollbars",
           "--screenshot=%s" % png, page.as_uri()]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                          env=dict(os.environ, HOME=str(tmp_path)))
    assert png.exists(), "chromium wrote no screenshot (exit %d): %s" % (proc.returncode, proc.stderr[-500:])
    assert png.stat().st_size > 30_000
    import matplotlib.image as mpimg
    img = mpimg.imread(str(png))
    assert img.shape[0] == 1600 and img.shape[1] == 1280
    # Not a blank page: the plot band (below the header) has many distinct colours.
    band = img[500:1100, 100:1200, :3].reshape(-1, 3)
    colours = {tuple((px * 255).astype(int)) for px in band[::37]}
    assert len(colours) > 20
    # The live-connections line is drawn in its blue somewhere in the plot band.
    blue = ((band[:, 0] < 0.2) & (band[:, 1] > 0.3) & (band[:, 1] < 0.5) & (band[:, 2] > 0.6)).sum()
    assert blue > 200
