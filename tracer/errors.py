"""The user-facing errors: one line saying what is wrong and what to do, and an exit code.

``cli.main`` maps every ``TraceQuitError`` to its line on stderr and its ``exit_code`` in one
place; anything else is a bug of ours (exit 70).
"""

# sysexits.h, and the shell's codes for a program that could not be run.
EX_USAGE = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_NOPERM = 77
EX_NOTRUNNABLE = 126
EX_NOTFOUND = 127


class TraceQuitError(Exception):
    """A user-facing error: its message is the whole line, ``exit_code`` the status."""

    exit_code = EX_SOFTWARE

    def __init__(self, message, exit_code=None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def code(self):
        """The exit code (the older name)."""
        return self.exit_code


class OutputExistsError(TraceQuitError):
    """An output file exists and ``--force`` was not given."""

    exit_code = EX_CANTCREAT

    def __init__(self, path):
        super().__init__("%s exists: choose another -o, or add --force to overwrite it" % path)
        self.path = path


class OutputError(TraceQuitError):
    """An output file cannot be created or written (no such directory, no permission, disk full)."""

    exit_code = EX_CANTCREAT
