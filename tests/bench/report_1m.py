"""Benchmark: report on a 1,000,000-event capture (target: < 30 s and < 2 GiB).

Synthesises the study's experiment-1 shape at scale (tests/synth.py: one Engine per
call, connections destroyed by generation-1 collections every 6.5 s, a generation-2 mass
drop, the rest at shutdown; both layers plus the server sampler) with CaptureWriter, then
reports on it in a fresh process so that only the report's memory is measured:

    load (read + parse)  ·  build_report  ·  render text / json / html

and prints wall time per phase and the peak RSS of the reporting process.

    .venv/bin/python tests/bench/report_1m.py                  # ~1.0 M events
    .venv/bin/python tests/bench/report_1m.py --events 200000  # quicker
    .venv/bin/python tests/bench/report_1m.py --capture X.tq   # an existing capture
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

#: Events engine_per_call writes per connection (engine_create, bpf_connect, conn_open, pool
#: connect/checkout/checkin, conn_destroy|close, bpf_close, bpf_wire, bpf_close_ret, engine_destroy).
EVENTS_PER_CONNECTION = 11


def synthesise(path: str, events: int) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: synth
    from synth import engine_per_call

    # ~11 events per connection, plus collections (~6 each) and sampler readings (2 per second at
    # 0.12 s per open): solve for the number of connections.
    per_conn = EVENTS_PER_CONNECTION + 6 / (6.5 / 0.12 / 33 * 33) * 1 + 2 * 0.12
    n = max(100, int(events / per_conn))
    t0 = time.monotonic()
    plan = engine_per_call(path, n=n)
    plan["synth_s"] = round(time.monotonic() - t0, 2)
    plan["connections"] = n
    return plan


def report_child(path: str, formats, out_dir: str) -> None:
    """In a fresh process: time each phase, print one JSON line of figures."""
    from trace_quit.analysis import build_report, load, render

    figures = {}
    t0 = time.monotonic()
    capture = load(path)
    figures["events"] = len(capture.events)
    figures["load_s"] = round(time.monotonic() - t0, 2)
    t1 = time.monotonic()
    report = build_report(capture)
    figures["build_report_s"] = round(time.monotonic() - t1, 2)
    for fmt in formats:
        t = time.monotonic()
        out = os.path.join(out_dir, "report." + ("txt" if fmt == "text" else fmt))
        render([report], fmt, path=out)
        figures["render_%s_s" % fmt] = round(time.monotonic() - t, 2)
        figures["%s_bytes" % fmt] = os.path.getsize(out)
    figures["total_s"] = round(time.monotonic() - t0, 2)
    figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["com_quit"] = report.connections.com_quit
    figures["by_cause"] = {k: v for k, v in report.com_quit.by_cause.items() if v}
    figures["drops"] = len(report.drops)
    figures["collections_that_closed"] = len(report.gc.that_closed_connections)
    sys.stdout.write(json.dumps(figures) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="approximate events to synthesise")
    parser.add_argument("--capture", help="report on this capture instead of synthesising one")
    parser.add_argument("--formats", default="text,json,html", help="renderers to time (comma-separated)")
    parser.add_argument("--keep", action="store_true", help="keep the synthesised capture and the reports")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]

    if args.child:
        report_child(args.child, formats, args.out_dir)
        return 0

    work = tempfile.mkdtemp(prefix="tq-bench-")
    path = args.capture
    plan = {}
    if path is None:
        path = os.path.join(work, "bench.tq")
        plan = synthesise(path, args.events)
        print("synthesised %s (%d connections, %.1f MiB) in %.1f s" % (
            path, plan["connections"], os.path.getsize(path) / 2 ** 20, plan["synth_s"]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", path, "--out-dir", work,
                           "--formats", ",".join(formats)], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print("the report failed (exit %d)" % proc.returncode, file=sys.stderr)
        return 1
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print("events            %s" % "{:,}".format(figures["events"]))
    for key in ("load_s", "build_report_s"):
        print("%-17s %6.2f s" % (key[:-2], figures[key]))
    for fmt in formats:
        print("render %-10s %6.2f s  (%s bytes)" % (fmt, figures["render_%s_s" % fmt],
                                                     "{:,}".format(figures["%s_bytes" % fmt])))
    print("total             %6.2f s   (target < 30 s)" % figures["total_s"])
    print("peak RSS          %6.0f MiB (target < 2048 MiB)" % figures["peak_rss_mib"])
    print("report            %s COM_QUITs %s, %d drops" % (
        "{:,}".format(figures["com_quit"]), figures["by_cause"], figures["drops"]))
    if plan:
        expected = sum(plan["gen1"]) + sum(plan["gen0"]) + plan["gen2"] + plan["shutdown"]
        assert figures["com_quit"] == expected == plan["connections"], (figures["com_quit"], expected)
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("kept in %s" % work)
    ok = figures["total_s"] < 30 and figures["peak_rss_mib"] < 2048
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
