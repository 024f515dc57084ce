"""DSNs: ``mysql://user:password@host:port/db[?unix_socket=/path]`` to mysqlclient and SQLAlchemy.

One spelling for the tracer's ``--dsn``, its sampler and every workload (workloads/dsn.py
re-exports this module: the tracer never imports ``workloads``). Parsed with SQLAlchemy's
``make_url`` when SQLAlchemy is importable. An unencoded ``@`` in the password is taken as
part of it (a host holds no ``@``): ``mysql://mon:ss@Mon9@127.0.0.1/db`` is user ``mon``,
password ``ss@Mon9`` (tests/unit/test_dsn.py).
"""

import re
import urllib.parse

from trace_quit.tracer.secrets import redact_url

SCHEMES = ("mysql", "mariadb")
_AUTHORITY = re.compile(r"^(?P<scheme>[^:/?#]+)://(?:(?P<userinfo>[^/?#]*)@)?(?P<rest>.*)$", re.DOTALL)


def _normalised(dsn):
    """``dsn`` with the userinfo's ``@`` percent-encoded, so any URL parser splits it right."""
    m = _AUTHORITY.match(dsn)
    if not m or m.group("userinfo") is None or "@" not in m.group("userinfo"):
        return dsn
    return "%s://%s@%s" % (m.group("scheme"), m.group("userinfo").replace("@", "%40"), m.group("rest"))


def _bad(dsn):
    return ValueError("a DSN looks like mysql://user:password@host:port/db, not %r" % redact(dsn))


def parse(dsn):
    """Return MySQLdb.connect() keyword arguments for ``dsn``."""
    if not isinstance(dsn, str) or dsn.split("://", 1)[0].split("+")[0].lower() not in SCHEMES or "://" not in dsn:
        raise _bad(dsn)
    try:
        from sqlalchemy.engine import make_url
    except ImportError:  # a Python without SQLAlchemy (a workload's bare interpreter)
        return _parse_stdlib(_normalised(dsn))
    try:
        url = make_url(_normalised(dsn))
    except Exception:
        raise _bad(dsn) from None
    kwargs = {"host": url.host or "localhost", "user": url.username or "", "password": url.password or "",
              "database": url.database or ""}
    if url.port:
        kwargs["port"] = url.port
    socket = url.query.get("unix_socket")
    if socket:
        kwargs["unix_socket"] = socket if isinstance(socket, str) else socket[0]
    return kwargs


def _parse_stdlib(dsn):
    u = urllib.parse.urlsplit(dsn)
    kwargs = {
        "host": urllib.parse.unquote(u.hostname or "localhost"),
        "user": urllib.parse.unquote(u.username or ""),
        "password": urllib.parse.unquote(u.password or ""),
        "database": (u.path or "/").lstrip("/"),
    }
    if u.port:
        kwargs["port"] = u.port
    query = urllib.parse.parse_qs(u.query)
    if "unix_socket" in query:
        kwargs["unix_socket"] = query["unix_socket"][0]
    return kwargs


def sqlalchemy_url(dsn):
    """The SQLAlchemy URL (mysqlclient driver) for ``dsn``."""
    scheme, sep, rest = _normalised(dsn).partition("://")
    return "mysql+mysqldb" + sep + rest


def redact(dsn):
    """``dsn`` with its password (also one holding ``@``, or one in the query) replaced by ***."""
    return redact_url(dsn) if isinstance(dsn, str) else dsn
