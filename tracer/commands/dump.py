"""``trace-quit dump``: a capture's records, one JSON object a line, streamed."""

import sys

from trace_quit.tracer.commands.common import CliError, check_capture_path, err
from trace_quit.tracer.errors import EX_DATAERR


class DumpCommand:
    """Print every record of a capture, one JSON object per line (for debugging)."""

    name = "dump"

    def prepare_parser(self, parser):
        parser.add_argument("capture", metavar="CAPTURE")

    def run(self, args):
        import json

        from trace_quit.analysis.capture import CaptureError, iter_records

        check_capture_path(args.capture)
        out = sys.stdout
        try:
            for record in iter_records(args.capture):  # streams: a huge capture is not loaded
                if record.get("k") in ("damaged", "partial") and set(record) == {"k", "line"}:
                    err("%s: %s from line %d on" % (args.capture, "damaged" if record["k"] == "damaged"
                                                     else "a cut-off last line (truncated)", record["line"]))
                    break
                out.write(json.dumps(record, sort_keys=True) + "\n")
        except CaptureError as exc:
            raise CliError(str(exc), EX_DATAERR) from None
        return 0
