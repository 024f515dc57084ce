"""``trace-quit report``: explain one or more captures, as text, JSON, HTML or a Perfetto trace."""

import os
import sys

from trace_quit.tracer.commands.common import CliError, check_capture_path, err, html_path_for, write_report_file
from trace_quit.tracer.errors import EX_CANTCREAT, EX_DATAERR


class ReportCommand:
    """Explain one or more captures (several: side by side).

    examples:
      trace-quit report trace-quit-main.1234.tqcap
      trace-quit report run.tqcap --format html -o run.html
      trace-quit report exp1.tqcap exp2.tqcap exp3.tqcap --format html -o compare.html
    """

    name = "report"

    def prepare_parser(self, parser):
        parser.add_argument("captures", nargs="+", metavar="CAPTURE")
        parser.add_argument("--format", choices=("text", "json", "html", "perfetto"), default="text")
        parser.add_argument("-o", "--output", help="write the report here instead of standard output")
        parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing output file")

    def run(self, args):
        from trace_quit import analysis

        captures = [_load_capture(path) for path in args.captures]
        for capture in captures:
            if capture.status != "complete":
                err("%s is %s: reporting what was recorded up to there" % (capture.path, capture.status))
        reports = [analysis.build_report(capture) for capture in captures]
        if args.format == "html" and not args.output:
            args.output = html_path_for(args.captures[0])
        if args.output:
            _check_not_a_capture(args.output, args.captures)
            write_report_file(reports, args.format, args.output, force=args.force, owner=_sudo_owner())
            err("report written to %s" % args.output)
        else:
            analysis.render(reports, args.format, stream=sys.stdout, color=sys.stdout.isatty())
        return 0


def _load_capture(path):
    from trace_quit.analysis.capture import CaptureError, load

    check_capture_path(path)
    try:
        return load(path)
    except CaptureError as exc:
        raise CliError(str(exc), EX_DATAERR) from None


def _check_not_a_capture(output, captures):
    """A report never replaces a capture it explains, --force or not (tests/unit/test_cli.py)."""
    for capture in captures:
        same = os.path.abspath(output) == os.path.abspath(capture)
        try:
            same = same or os.path.samefile(output, capture)
        except OSError:
            pass
        if same:
            raise CliError("-o %s is the capture being reported: choose another -o" % output, EX_CANTCREAT)


def _sudo_owner():
    """The user who ran sudo, who owns the report (None when we run as ourselves)."""
    if os.geteuid() == 0 and os.environ.get("SUDO_UID"):
        uid = int(os.environ["SUDO_UID"])
        return uid, int(os.environ.get("SUDO_GID", uid))
    return None
