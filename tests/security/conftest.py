"""The security suite: an unprivileged local user attacks what trace-quit, running as root,
reads, writes, shows and serves (docs/security.md says which rule each test pins).

``attacker``: a user created for the session (``useradd``), removed at its end with
everything it left running. The traced program runs as that user the way sudo makes it
(``SUDO_UID``: trace-quit runs the program as the invoking user); other attacks run as it
through ``as_attacker`` (setuid/setgid before exec, no supplementary groups). Each test
stops, by pid, the processes it started.
"""

import os
import pwd
import secrets
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tq_support
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # attacker


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.security)
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def attacker():
    """The pwd entry of a fresh unprivileged user (no home, no login shell, no groups)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (useradd, and the tracer runs as root)")
    name = "tq-attack-" + secrets.token_hex(3)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group",
                    name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        # Each test stops the processes it started as this user (by pid); -f: never leave the user behind.
        subprocess.run(["userdel", "-f", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


@pytest.fixture
def shared_tmp(tmp_path):
    """``tmp_path``, writable by the attacker; the directories above it in the temp root made
    traversable (pytest's own are 0700). Nothing outside the temp root is touched."""
    import tempfile

    root = os.path.realpath(tempfile.gettempdir())
    path = os.path.dirname(os.path.realpath(str(tmp_path)))
    while path.startswith(root + os.sep):
        mode = os.stat(path).st_mode
        if mode & 0o011 != 0o011:
            os.chmod(path, mode | 0o711)
        path = os.path.dirname(path)
    os.chmod(str(tmp_path), 0o777)
    return tmp_path
