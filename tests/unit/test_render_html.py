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
    # Side by side where two columns fit, stacked below: tests below check both widths in Chromium.
    assert "repeat(auto-fit, minmax(min(520px, 100%), 1fr))" in html


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


def test_plots_say_in_words_what_they_show(study, tmp_path):
    kc = build_report(load(known_causes(str(tmp_path / "kc.tq"))))
    html = render([study, kc], "html")
    svgs = re.findall(r"<svg[^>]*>", html)
    assert len(svgs) == 3 and all('role="img"' in s and "aria-labelledby" in s for s in svgs)
    titles = re.findall(r'<title id="(tq-plot-\d+)-t">([^<]*)</title>', html)
    assert [t for _, t in titles] == ["Live connections of 2 captures on one time axis",
                                      "Timeline of epc.tq", "Timeline of kc.tq"]
    assert len({i for i, _ in titles}) == 3  # ids unique on the page
    assert "Largest drop 162 to 79 at 66.3 s (gc generation 2)." in html
    assert "COM_QUITs by cause: explicit_close 7, refcount 11, gc 18, shutdown 3." in html


def test_causes_differ_by_more_than_colour_and_share_one_palette(study, tmp_path):
    from trace_quit.analysis import plot
    # Every cause and generation has its own hatch (bars) and dash pattern (collection lines).
    assert len(set(plot.CAUSE_HATCHES.values())) == len(plot.CAUSE_HATCHES)
    assert len(set(plot.GEN_HATCHES.values())) == len(set(plot.GEN_STYLES.values())) == 3
    html = render(study, "html")
    assert html.count("<pattern") >= 3  # the gen-0, gen-1, gen-2 and shutdown bars are hatched
    # The table's generation swatches are the plot's generation colours.
    for gen, color in plot.GEN_COLORS.items():
        if study.com_quit.gc_by_generation.get(str(gen)):
            assert 'style="background: %s"></span>gen %d:' % (color, gen) in html


def test_a_comparison_uses_one_bin_width_and_one_y_scale(study, tmp_path):
    kc = build_report(load(known_causes(str(tmp_path / "kc.tq"))))
    assert kc.timeline.quit_bin_s != study.timeline.quit_bin_s  # each alone would bin differently
    html = render([study, kc], "html")
    labels = re.findall(r"COM_QUIT / ([0-9.e-]+)s", html)
    assert len(labels) == 2 and len(set(labels)) == 1, labels


def _webdriver(tmp_path):
    driver_path = shutil.which("chromedriver")
    browser = _chromium()
    if browser is None or driver_path is None:
        pytest.skip("no chromium/chromedriver on PATH: cannot measure the HTML page "
                    "(apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: cannot drive Chromium (pip install selenium)")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--user-data-dir=%s" % (tmp_path / "profile")):
        opts.add_argument(arg)
    opts.binary_location = browser
    return webdriver.Chrome(service=Service(driver_path), options=opts)


@pytest.mark.parametrize("width", [800, 1400])
def test_pages_never_scroll_sideways_and_comparisons_stay_on_screen(study, tmp_path, width):
    kc = build_report(load(known_causes(str(tmp_path / "kc.tq"))))
    one, two = tmp_path / "one.html", tmp_path / "two.html"
    render(study, "html", path=str(one))
    render([study, kc], "html", path=str(two))
    driver = _webdriver(tmp_path)
    try:
        driver.set_window_size(width, 1000)
        for page in (one, two):
            driver.get(page.as_uri())
            scroll, client = driver.execute_script(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert scroll <= client, (page.name, width, scroll, client)
        # Each capture's column lies within the window: stacked at 800 px, side by side at 1400.
        rects = driver.execute_script(
            "return Array.from(document.querySelectorAll('.grid > section'))"
            ".map(function (s) { var r = s.getBoundingClientRect(); return [r.left, r.right, r.top]; })")
        client = driver.execute_script("return document.documentElement.clientWidth")
        assert len(rects) == 2 and all(0 <= left and right <= client for left, right, _ in rects)
        (l1, r1, t1), (l2, r2, t2) = rects
        if width == 800:
            assert l1 == l2 and t2 > t1
        else:
            assert l2 >= r1 and t1 == t2
    finally:
        driver.quit()
