"""Helpers of the security suite: run as the attacker user, as sudo would run its program."""

import os
import signal


def as_attacker(user, nofile=None):
    """A preexec_fn: become ``user`` (optionally with ``nofile`` descriptors allowed)."""
    def drop():
        if nofile is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    return drop


def sudo_env(user, **extra):
    """The environment sudo gives trace-quit: the program is run as ``user``."""
    env = dict(os.environ, SUDO_UID=str(user.pw_uid), SUDO_GID=str(user.pw_gid), SUDO_USER=user.pw_name)
    env.update(extra)
    return env


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
