"""known-causes-pymysql: known-causes over PyMySQL: the same rows, and none but close() sends COM_QUIT.

The rows of known-causes (workloads/known_causes.py), same counts by construction: 7
explicit_close, 13 refcount, 21 gc (5 of generation 0, 16 of generation 2), 3 shutdown.
PyMySQL sends COM_QUIT only from ``close()``; its ``__del__`` closes the socket without it
(docs/pymysql.md), so the 37 connections destroyed open are 37 aborted clients on the
server (``Aborted_clients`` +37, 37 "Aborted connection" notes in its error log), and the
general log has 7 ``Quit`` lines.

    python -m trace_quit.workloads known-causes-pymysql --dsn mysql://u:p@127.0.0.1:3306/db
"""

import sys

from trace_quit.workloads import known_causes


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    return known_causes.main(["--driver", "pymysql"] + argv)


if __name__ == "__main__":
    sys.exit(main())
