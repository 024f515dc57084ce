"""The one way trace-quit writes a file a user keeps: captures, reports, HTML pages.

Every output is 0600, owned by the invoking user (``owner=(uid, gid)``, the sudo user when
run under sudo), never written through a symlink, never over an existing file unless
``force``. Reports are written whole (``write_private``: a temporary file in the same
directory, renamed into place), so a renderer that fails leaves nothing behind; the capture
is streamed (``open_private``), so a killed tracer leaves what it had flushed, readable.
"""

import os
import tempfile

from trace_quit.tracer.errors import OutputError, OutputExistsError


def _output_error(path, exc):
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        return OutputError("cannot write %s: no directory %s (create it, or choose another -o)"
                           % (path, os.path.dirname(os.path.abspath(path))))
    return OutputError("cannot write %s: %s" % (path, reason))


def open_private(path, force=False, owner=None, mode=0o600):
    """Create ``path`` 0600 without following a symlink; chown it to ``owner=(uid, gid)``; return the fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if force:
        # A symlink planted at the path is never followed, even with --force: replace the link.
        if os.path.islink(path):
            os.unlink(path)
        flags |= os.O_TRUNC
    else:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise OutputExistsError(path) from None
    except OSError as exc:
        raise _output_error(path, exc) from None
    try:
        os.fchmod(fd, mode)  # umask may have narrowed it, never widened; force 0600 exactly
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path, data, force=False, owner=None, mode=0o600):
    """Write ``data`` (str or bytes) to ``path`` whole, or leave ``path`` as it was.

    Refuses an existing ``path`` (even a dangling symlink) unless ``force``; with ``force``
    a symlink there is replaced, never followed (tests/unit/test_files.py)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not force and os.path.lexists(path):
        raise OutputExistsError(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".part", dir=directory)
    except OSError as exc:
        raise _output_error(path, exc) from None
    try:
        try:
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if force:
                os.rename(tmp, path)   # replaces the entry (a symlink itself, not its target)
            else:
                os.link(tmp, path)     # atomic no-clobber: fails if it appeared meanwhile
                os.unlink(tmp)
        except FileExistsError:
            raise OutputExistsError(path) from None
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _output_error(path, exc) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
