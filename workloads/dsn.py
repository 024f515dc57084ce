"""DSNs: ``mysql://user:password@host:port/db[?unix_socket=/path]`` to mysqlclient and SQLAlchemy.

One spelling for every workload, the sampler and the tracer's ``--dsn``. Stdlib only.
"""

import urllib.parse


def parse(dsn):
    """Return MySQLdb.connect() keyword arguments for ``dsn``."""
    u = urllib.parse.urlsplit(dsn)
    if u.scheme.split("+")[0] not in ("mysql", "mariadb"):
        raise ValueError("a DSN looks like mysql://user:password@host:port/db, not %r" % redact(dsn))
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
    u = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(("mysql+mysqldb",) + tuple(u[1:]))


def redact(dsn):
    """``dsn`` with its password replaced by ***."""
    u = urllib.parse.urlsplit(dsn)
    if u.password is None:
        return dsn
    netloc = u.netloc.replace(":" + u.password + "@", ":***@", 1)
    return urllib.parse.urlunsplit((u.scheme, netloc) + tuple(u[2:]))
