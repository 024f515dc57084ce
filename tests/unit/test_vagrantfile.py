"""The Vagrantfile parses, and provisions an Ubuntu LTS box with scripts/setup.sh's MySQL path."""

import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VAGRANTFILE = os.path.join(REPO, "Vagrantfile")


def test_vagrantfile_is_valid_ruby():
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed: cannot run `ruby -c Vagrantfile` (scripts/setup.sh installs ruby)")
    proc = subprocess.run([ruby, "-c", VAGRANTFILE], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "Syntax OK", proc.stdout + proc.stderr


def test_vagrantfile_provisions_ubuntu_lts_with_mysql_through_setup_sh():
    with open(VAGRANTFILE) as f:
        text = f.read()
    box = re.search(r'config\.vm\.box\s*=\s*"([^"]+)"', text).group(1)
    assert re.match(r"ubuntu/(focal|jammy|noble)64$", box), box
    assert '"TQ_DB" => "mysql"' in text
    assert re.search(r'inline:\s*"cd (\S+) && \./scripts/setup\.sh"', text)
    synced = re.search(r'synced_folder "\.", "(\S+)",\s*type: "rsync"', text).group(1)
    assert "cd %s &&" % synced in text
