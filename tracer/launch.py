"""Start the traced program: fork, hold it on a "cork" pipe until every probe is attached,
drop to the invoking user, exec.

Why a cork: uprobes attach by file, and the process-tree filter needs the child's pid
before it runs a single instruction of the program; attaching after exec would race the
program's first connection (bcc's ``memleak -c`` races its own target that way).
The child is forked before the tracer starts any thread, so the fork is safe.
"""

import dataclasses
import errno
import os
import pwd
import signal
import struct
from typing import Dict, List, Optional, Tuple

from trace_quit.tracer.errors import TraceQuitError


@dataclasses.dataclass(frozen=True)
class RunAs:
    """The identity the traced program runs as."""

    uid: int
    gid: int
    groups: Tuple[int, ...]
    name: str
    home: str

    @classmethod
    def invoking_user(cls, as_root=False, environ=os.environ):
        """The user who ran sudo (SUDO_UID/SUDO_GID), or ourselves; root only with ``as_root``."""
        if os.geteuid() == 0 and not as_root and environ.get("SUDO_UID"):
            uid = int(environ["SUDO_UID"])
            gid = int(environ.get("SUDO_GID", uid))
        else:
            uid, gid = os.getuid(), os.getgid()
        try:
            entry = pwd.getpwuid(uid)
            name, home = entry.pw_name, entry.pw_dir
        except KeyError:
            name, home = str(uid), "/"
        try:
            groups = tuple(sorted(set(os.getgrouplist(name, gid))))
        except (KeyError, OSError):
            groups = (gid,)
        return cls(uid=uid, gid=gid, groups=groups, name=name, home=home)

    @property
    def is_current(self):
        return self.uid == os.geteuid() and self.gid == os.getegid()


class LaunchError(TraceQuitError):
    """The program could not be started; ``code`` is 127 (not found) or 126 (not runnable)."""

    def __init__(self, message, code):
        super().__init__(message, code)


class CorkedChild:
    """A forked child waiting on a pipe; ``release()`` lets it exec the program."""

    def __init__(self, argv: List[str], env: Dict[str, str], run_as: RunAs, cwd: Optional[str] = None):
        self.argv = argv
        self.cwd = cwd  # the program's cwd: the tracer's may be elsewhere while bcc compiles
        self.env = env
        self.run_as = run_as
        self.pid: Optional[int] = None
        self.status: Optional[int] = None
        self._cork_w = None
        self._err_r = None

    def spawn(self) -> int:
        """Fork; the child blocks until ``release()``. Returns the child's pid."""
        cork_r, cork_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # child: never returns
            try:
                os.close(cork_w)
                os.close(err_r)
                self._child(cork_r, err_w)
            finally:
                os._exit(127)
        os.close(cork_r)
        os.close(err_w)
        self.pid, self._cork_w, self._err_r = pid, cork_w, err_r
        return pid

    def _child(self, cork_r, err_w):
        stop = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGQUIT)
        for sig in stop:
            signal.signal(sig, signal.SIG_DFL)
        # The tracer forks with its stop signals blocked; exec would pass that mask on.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)
        go = os.read(cork_r, 1)
        os.close(cork_r)
        if go == b"x":
            os._exit(125)  # the tracer gave up before starting the program (a stop signal, an error)
        # b"g", or EOF: the tracer was SIGKILLed while attaching (every catchable signal
        # ends in b"x"). The user asked for the program to run; it runs, partly traced,
        # rather than being lost with the tracer (tests/system/test_faults.py).
        try:
            if self.cwd is not None:
                os.chdir(self.cwd)
            run_as = self.run_as
            if not run_as.is_current:
                os.setgroups(list(run_as.groups))
                os.setgid(run_as.gid)
                os.setuid(run_as.uid)
            os.execvpe(self.argv[0], self.argv, self.env)
        except OSError as exc:
            os.write(err_w, struct.pack("i", exc.errno or errno.EPERM))
        os._exit(127)

    def release(self):
        """Let the child exec; raise LaunchError if the exec failed."""
        os.write(self._cork_w, b"g")
        os.close(self._cork_w)
        self._cork_w = None
        data = os.read(self._err_r, 4)  # EOF on a successful exec (the pipe is close-on-exec)
        os.close(self._err_r)
        if data:
            (err,) = struct.unpack("i", data)
            self.wait()
            name = self.argv[0]
            if err == errno.ENOENT:
                raise LaunchError("%s: command not found" % name, 127)
            raise LaunchError("cannot run %s: %s" % (name, os.strerror(err)), 126)

    def abandon(self):
        """Tell a still-corked child to exit without running anything."""
        if self._cork_w is not None:
            try:
                os.write(self._cork_w, b"x")
            except OSError:
                pass  # it is already gone (a Ctrl-C at the terminal reaches it too)
            os.close(self._cork_w)
            self._cork_w = None
            self.wait()

    def signal(self, sig):
        """Send ``sig`` to the child if it is still running."""
        if self.pid and self.status is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        """Wait for the child; its status as a shell would give it (128+N for signal N)."""
        if self.status is None:
            _, raw = os.waitpid(self.pid, 0)
            self.status = exit_status(raw)
        return self.status


def exit_status(raw: int) -> int:
    """A waitpid() status as an exit code: the code, or 128+N when killed by signal N."""
    if os.WIFSIGNALED(raw):
        return 128 + os.WTERMSIG(raw)
    return os.WEXITSTATUS(raw)
