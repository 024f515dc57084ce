"""The server's general query log, parsed: which connection sent which command (tests read its ``Quit`` lines)."""

import re

#: A general-log entry: an optional timestamp, tabs/spaces, the connection id, the command
#: ("Connect", "Query", "Quit", "Init DB", ...), a tab and the argument.
_GENERAL_LOG_LINE = re.compile(r"^[^\t]*\t+\s*(\d+) ([A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)*)(?:\t(.*))?$")


def parse_general_log(text):
    """``[(connection_id, command, argument)]`` from general-log text (MariaDB or MySQL 8)."""
    out = []
    for line in text.splitlines():
        m = _GENERAL_LOG_LINE.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3) or ""))
    return out
