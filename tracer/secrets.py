"""Passwords never reach a capture, a report, a log or a label: redaction by what a value *is*.

Stdlib only and Python 3.8-compatible: the in-process agent loads this file by path (through
``events.py``, which re-exports ``redact``/``redact_argv``) inside the traced program.

* URLs (``scheme://user:password@host/...``): the password is everything between the first
  ``:`` of the userinfo and the authority's *last* ``@`` (a password holding ``@``
  unencoded is still hidden whole), and query parameters named like a password
  (``?password=``, ``&passwd=``, ``pwd``...). DSNs are *parsed* in tracer/dsn.py with
  SQLAlchemy's ``make_url``; this module only finds and hides.
* Flags, by name: ``--password=…``, ``--db-password …``, ``--mysql-pwd=…``, ``--api-token``;
  ``-pSECRET`` (the mysql client's attached form). Not a password: ``-p no:cacheprovider``
  (pytest; mysql's ``-p`` never takes a separate value), ``-P 3411`` (a port).
  tests/unit/test_secrets.py pins both directions.
"""

import re

REDACTED = "***"
#: Keys whose values are secrets wherever they appear (connect() kwargs, query strings).
SECRET_KEYS = frozenset(("password", "passwd", "pwd", "pass", "secret", "token"))

# A flag name (dashes stripped, lower case) is secret when its last word is one of these.
_SECRET_FLAG = re.compile(r"(?:^|[-_.])(?:password|passwd|pwd|pass|passphrase|secret|token|api-?key)$")
_URL_USERINFO = re.compile(
    r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<pw>[^/?#\s]*)(?P<post>@[^@/?#\s]*(?:[/?#\s]|$))")
# Any query parameter; whether it is a secret is decided on its decoded name (``pass%77d``,
# ``db_password``), so an encoded spelling hides nothing (tests/unit/test_secrets.py).
_QUERY_PARAM = re.compile(r"(?P<pre>[?&;](?P<key>[^=&;#?\s]{1,64})=)(?P<pw>[^&;#\s]*)")


def redact_url(text):
    """``text`` with the password of any URL in it, and password-like query values, hidden."""
    if "://" not in text and "=" not in text:
        return text
    text = _URL_USERINFO.sub(lambda m: m.group("pre") + REDACTED + m.group("post")
                             if m.group("pw") else m.group(0), text)
    return _QUERY_PARAM.sub(_hide_query_value, text)


def _hide_query_value(m):
    if not m.group("pw") or not is_secret_key(m.group("key")):
        return m.group(0)
    return m.group("pre") + REDACTED


def is_secret_key(key):
    """A query or keyword name that holds a secret, spelled plainly or percent-encoded."""
    try:
        from urllib.parse import unquote_plus

        key = unquote_plus(key)
    except Exception:
        pass
    name = key.lower().replace("_", "-")
    return name in SECRET_KEYS or is_secret_flag(name)


def _flag_name(arg):
    """``--db-password=x`` -> ("db-password", "x"); ``--db-password`` -> ("db-password", None)."""
    if not arg.startswith("--") or len(arg) < 3:
        return None, None
    name, eq, value = arg[2:].partition("=")
    return name.lower().replace("_", "-"), (value if eq else None)


def is_secret_flag(name):
    return bool(_SECRET_FLAG.search(name))


def redact(text):
    """One string (an argv item, an error message, a URL) with its secrets hidden."""
    if not isinstance(text, str):
        return text
    name, value = _flag_name(text)
    if name is not None and value is not None and value and is_secret_flag(name):
        return text[:len(text) - len(value)] + REDACTED
    if text.startswith("-p") and len(text) > 2 and not text.startswith("-p="):
        return "-p" + REDACTED  # mysql's attached -pSECRET (a separate "-p VALUE" is not a password)
    return redact_url(text)


def redact_argv(argv):
    """Each argument redacted, and the value after a bare secret flag (``--db-password VALUE``)."""
    out = []
    hide_next = False
    for arg in argv:
        if hide_next:
            hide_next = False
            if isinstance(arg, str) and not (arg.startswith("-") and len(arg) > 1):
                out.append(REDACTED)
                continue
        if isinstance(arg, str):
            name, value = _flag_name(arg)
            if name is not None and value is None and is_secret_flag(name):
                hide_next = True
                out.append(arg)
                continue
        out.append(redact(arg))
    return out
