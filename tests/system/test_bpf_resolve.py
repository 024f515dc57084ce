"""Resolution before the command runs: interpreter, files, probe sites (no root needed)."""

import os
import stat

import pytest

from trace_quit.tracer.bpf import BpfUnavailable, resolve_targets
from trace_quit.tracer.bpf import elf, resolve, x86
from tq_support import (AGENT_VERSIONS, VENV_PY, cpython_param, expected_close_site, system_python, venv_base,
                        venv_python_for)


def test_probe_site_skips_a_leading_null_check():
    # test %rdi,%rdi; je rel32; push %rbp  (libmariadb's mysql_close)
    code = bytes.fromhex("4885ff0f844701000055") + b"\x90" * 6
    assert x86.choose_probe_offset(code)[0] == 9
    assert "NULL" in x86.choose_probe_offset(code)[2]
    assert expected_close_site(code) == 9


def test_probe_site_after_endbr64_and_the_null_check():
    # Debian 13's libmariadb3 is built with CET: endbr64; test %rdi,%rdi; je rel32; push %rbp.
    code = bytes.fromhex("f30f1efa4885ff0f844701000055") + b"\x90" * 4
    assert x86.choose_probe_offset(code)[0] == 13
    assert expected_close_site(code) == 13


def test_probe_site_stays_at_entry_when_push_comes_first_or_the_prefix_is_unsafe():
    assert x86.choose_probe_offset(bytes.fromhex("55") + b"\x90" * 15)[:1] == (0,)
    assert x86.choose_probe_offset(bytes.fromhex("f30f1efa55") + b"\x90" * 11)[0] == 4  # endbr64; push
    # mov %rsi,%rdi before the push rewrites an argument register: stay at +0.
    assert x86.choose_probe_offset(bytes.fromhex("4889f755") + b"\x90" * 12)[0] == 0
    # a je after testing another register could skip real calls: stay at +0.
    assert x86.choose_probe_offset(bytes.fromhex("4885f6740255") + b"\x90" * 10)[0] == 0


def test_usdt_operands():
    assert resolve.parse_usdt_arg("-4@112(%rsp)") == {"KIND": 2, "REG": 152, "OFF": 112, "SIZE": 4, "SIGNED": 1}
    assert resolve.parse_usdt_arg("-8@%r12") == {"KIND": 1, "REG": 24, "OFF": 0, "SIZE": 8, "SIGNED": 1}
    assert resolve.parse_usdt_arg("4@$7")["KIND"] == 3
    assert resolve.parse_usdt_arg("8@16(%rip)") is None  # not supported: reported missing


def test_sys_path0_follows_the_command_line(tmp_path):
    cwd = str(tmp_path)
    assert resolve._python_path0(["-m", "pkg"], cwd) == (cwd, [])
    assert resolve._python_path0(["-I", "x.py"], cwd) == (None, ["-I"])
    assert resolve._python_path0(["-X", "dev", "sub/x.py"], cwd)[0] == os.path.join(cwd, "sub")
    assert resolve._python_path0(["-c", "pass"], cwd) == (cwd, [])


def _script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_shebang_and_env_lead_to_the_interpreter(tmp_path):
    direct = _script(tmp_path / "a", "#!%s\nprint(1)\n" % VENV_PY)
    via_env = _script(tmp_path / "b", "#!/usr/bin/env -S python3 -u\nprint(1)\n")
    env = dict(os.environ, PATH=os.path.dirname(VENV_PY) + os.pathsep + os.environ.get("PATH", ""))
    def interpreter(argv):
        cmd = resolve.follow_command(argv, env)
        return cmd.interpreter, cmd.args

    assert interpreter([direct]) == (VENV_PY, [direct])
    interp, args = interpreter([via_env, "x"])
    assert os.path.realpath(interp) == os.path.realpath(VENV_PY) and args == ["-u", via_env, "x"]
    assert interpreter(["env", "A=1", VENV_PY, "-c", "pass"]) == (VENV_PY, ["-c", "pass"])


def test_a_missing_command_is_the_only_resolution_error():
    with pytest.raises(BpfUnavailable, match="command not found"):
        resolve_targets(["no-such-command-xyz"], None, 0, 0)
    with pytest.raises(BpfUnavailable, match="no command"):
        resolve_targets([], None, 0, 0)


def _venv_first_env():
    return dict(os.environ, PATH=os.path.dirname(VENV_PY) + os.pathsep + os.environ.get("PATH", ""))


def test_a_non_python_command_is_probed_on_guesses_with_reasons():
    env = _venv_first_env()  # python3 on PATH: the project venv's (Debian 3.11 + mysqlclient)
    t = resolve_targets(["/bin/true"], env, 0, 0)
    assert t.command == {"path": "/bin/true", "python": False, "why": "/bin/true is not a Python interpreter"}
    assert [(g["interpreter"], g["why"]) for g in t.guesses] == [
        (os.path.join(os.path.dirname(VENV_PY), "python3"), "the python3 on the program's PATH")]
    assert t.guesses[0]["mysql_so"] == t.mysql_so and t.mysql_so.startswith(os.path.dirname(os.path.dirname(VENV_PY)))
    assert t.nothing_to_probe is None
    assert {p.role for p in t.probes} == {"gc_start", "gc_done", "finalize", "after_atexit", "py_close", "py_dealloc",
                                         "close", "close_ret", "connect", "connect_ret"}
    assert [c["path"] for c in t.client_libs] == [resolve_targets([VENV_PY, "-c", "pass"], None, 0, 0).client_lib]
    assert any("not a Python interpreter: probes are placed on guesses" in n for n in t.notes)


def test_a_shell_command_leads_to_the_python_it_names(tmp_path):
    venv_py = VENV_PY
    t = resolve_targets(
        ["bash", "-c", "cd /tmp && exec %s -m trace_quit.workloads known-causes --dsn x | cat" % venv_py],
        dict(os.environ, PATH="/usr/bin:/bin"), 0, 0, cwd=str(tmp_path))
    assert t.guesses[0]["interpreter"] == venv_py
    assert t.guesses[0]["why"].startswith("run by the shell command")
    assert t.interpreter == venv_py and t.mysql_so and t.gc_mode == "usdt"
    # A script run through its #! by a shell, naming the interpreter through a variable.
    script = _script(tmp_path / "run.sh",
                     "#!/bin/sh\n# start\nexport A=1\nexec \"$VENV/bin/python\" -u app.py \"$@\"\n")
    t = resolve_targets([script, "x"],
                        dict(os.environ, VENV=os.path.dirname(os.path.dirname(venv_py)), PATH="/usr/bin:/bin"),
                        0, 0, cwd=str(tmp_path))
    assert t.guesses[0] == dict(t.guesses[0], interpreter=venv_py, why="run by the script %s" % script)
    assert t.mysql_so is not None


def test_without_any_python_the_client_libraries_in_the_loader_cache_are_probed():
    t = resolve_targets(["/bin/true"], dict(os.environ, PATH="/nonexistent"), 0, 0)
    # No Python anywhere: still the client library from the loader cache, said to be a guess.
    assert t.guesses == [] and t.nothing_to_probe is None
    assert t.client_libs[0]["how"].startswith("found through /etc/ld.so.cache")
    assert {p.role for p in t.probes} == {"close", "close_ret", "connect", "connect_ret"}
    if "libmariadb.so.3" in t.client_libs[0]["path"]:
        assert t.last_errno_offset == 0x90  # libmariadb3's mysql_errno: mov 0x90(%rdi),%eax


def test_nothing_to_probe_is_said_not_raised(monkeypatch):
    monkeypatch.setattr(elf, "ld_cache", lambda path="/etc/ld.so.cache": {})
    t = resolve_targets(["/bin/true"], dict(os.environ, PATH="/nonexistent"), 0, 0)
    assert t.probes == [] and t.client_libs == []
    assert t.nothing_to_probe.startswith(
        "/bin/true is not a Python interpreter and neither a Python nor a MySQL client")


def test_the_project_venv_resolves_to_debian_python_and_libmariadb():
    t = resolve_targets([VENV_PY, "-c", "pass"], None, 0, 0)
    assert t.libpython_static and t.gc_mode == "usdt" and t.basicsize == 16
    assert t.mysql_so.startswith(os.path.dirname(os.path.dirname(VENV_PY)))
    close = [p for p in t.probes if p.role == "close"][0]
    lib = elf.Elf(close.path)
    entry = lib.vaddr_to_offset(lib.symbol("mysql_close").value)
    with open(close.path, "rb") as f:
        f.seek(entry)
        code = f.read(32)
    # Debian 12's libmariadb3: +9 (after test; je); Debian 13's CET build: +13 (after endbr64 too).
    assert close.offset - entry == expected_close_site(code) > 0
    assert t.timings["find_spec_helper_s"] < 2


def test_without_mysqlclient_only_the_interpreter_probes_remain():
    t = resolve_targets([system_python(), "-I", "-c", "pass"], None, 0, 0)
    assert t.mysql_so is None
    assert any(m["what"] == "mysqlclient" for m in t.missing)
    assert {p.role for p in t.probes} == {"gc_start", "gc_done", "finalize", "after_atexit"}


#: The first call after the atexit handlers in Py_FinalizeEx, per CPython version (pyenv's builds).
AFTER_ATEXIT_SITES = {"3.8": ("flush_std_files", "uprobe"), "3.11": ("_PyThreadState_DeleteExcept", "uprobe"),
                      "3.13": ("_PyAtExit_Call", "uretprobe"), "3.14": ("_PyAtExit_Call", "uretprobe"),
                      "3.15": ("_PyAtExit_Call", "uretprobe")}
#: The same where the venv was made from the distribution's stripped interpreter (no .symtab):
#: Debian 13's python3.13 exports neither _PyAtExit_Call nor _PyThreadState_RemoveExcept; nor do
#: Debian sid's python3.14 and python3.15 (measured there).
AFTER_ATEXIT_SYSTEM_SITES = {"3.11": ("_PyThreadState_DeleteExcept", "uprobe"), "3.13": ("PyGC_Collect", "uprobe"),
                             "3.14": ("PyGC_Collect", "uprobe"), "3.15": ("PyGC_Collect", "uprobe")}


@pytest.mark.parametrize("version", [cpython_param(v) for v in sorted(AFTER_ATEXIT_SITES)])
def test_shutdown_starts_after_the_atexit_handlers_on_every_build(version):
    """resolve.AFTER_ATEXIT: the first call after atexit handlers in Py_FinalizeEx, per build."""
    python = venv_python_for(version)
    assert os.path.exists(python), "scripts/setup.sh did not build the test venv for %s" % version
    base = venv_base(version)
    sites_of = AFTER_ATEXIT_SYSTEM_SITES if base and base[1] == "system" else AFTER_ATEXIT_SITES
    symbol, how = sites_of[version]
    t = resolve_targets([python, "-c", "pass"], None, 0, 0)
    sites = [(p.symbol, p.how) for p in t.probes if p.role == "after_atexit"]
    assert sites == [(symbol, how)] and t.after_atexit is True
    assert not [m for m in t.missing if "atexit" in m["what"]]


def test_the_system_python_has_a_shutdown_site_after_its_atexit_handlers():
    """Debian 12's python3.11 and Debian 13's python3.13 are stripped and static: exported sites only."""
    python = system_python()
    t = resolve_targets([python, "-c", "pass"], None, 0, 0)
    sites = [(p.symbol, p.how) for p in t.probes if p.role == "after_atexit"]
    version = "%d.%d" % tuple(t.python_version[:2])
    if version in AFTER_ATEXIT_SYSTEM_SITES:
        assert sites == [AFTER_ATEXIT_SYSTEM_SITES[version]]
    assert t.after_atexit is True and len(sites) == 1, (t.python_version, sites, t.missing)


# --- builds we cannot run here (tracer/bpf/compat.py): the real files, the helper's answer changed


def _as_if(monkeypatch, **answer):
    """resolve_targets on the project venv, with the interpreter's self-description altered."""
    real = resolve._run_helper

    def helper(*args, **kwargs):
        return dict(real(*args, **kwargs), **answer)

    monkeypatch.setattr(resolve, "_run_helper", helper)
    return resolve_targets([VENV_PY, "-c", "pass"], None, 0, 0)


def test_the_project_venv_is_a_generational_collector_with_mysql_verified_first():
    t = resolve_targets([VENV_PY, "-c", "pass"], None, 0, 0)
    assert t.gc_collector == "generational" and t.gc_args["GC_START_ARG_KIND"] != 0
    assert t.mysqlclient_layout["verified"] and t.mysqlclient_layout["mysql_offset"] == t.basicsize == 16
    # mysqlclient 2.3 takes a per-connection lock in close() (a field after `open`); 2.2 does not.
    assert t.mysqlclient_layout["lock"] == (tuple(map(int, t.mysqlclient_version.split(".")[:2])) >= (2, 3))
    assert {"py_close", "py_dealloc"} <= {p.role for p in t.probes}


def test_python_3_14_early_releases_get_brackets_without_a_generation(monkeypatch):
    t = _as_if(monkeypatch, version=[3, 14, 2])
    assert t.gc_collector == "incremental"
    assert t.gc_args["GC_START_ARG_KIND"] == 0  # the kernel records -1: no generation claimed
    assert {"gc_start", "gc_done"} <= {p.role for p in t.probes}
    assert any("3.14.0-3.14.4" in n and "without a generation" in n for n in t.notes)
    t = _as_if(monkeypatch, version=[3, 14, 5])
    assert t.gc_collector == "generational" and t.gc_args["GC_START_ARG_KIND"] != 0


def test_a_free_threaded_build_has_no_generations_and_a_larger_header(monkeypatch):
    t = _as_if(monkeypatch, gil_disabled=True, basicsize=32)
    assert t.gc_collector == "free-threaded" and t.gc_args["GC_START_ARG_KIND"] == 0
    assert t.basicsize == 32
    # This _mysql.so passes &self->connection at +16: with a 32-byte header that is not MYSQL,
    # so close()/dealloc are not attributed, and the report says why.
    assert not {"py_close", "py_dealloc"} & {p.role for p in t.probes}
    assert any("layout" in m["what"] and "+16" in m["why"] and "not attributed" in m["why"] for m in t.missing)
    assert "close" in {p.role for p in t.probes}  # mysql_close itself is still seen


@pytest.mark.parametrize("version", [cpython_param(v) for v in AGENT_VERSIONS])
def test_every_test_venvs_mysqlclient_is_read_with_mysql_right_after_the_header(version):
    # Real extensions, both layouts: 2.2.7 (3.8, 3.9 here) without a lock, 2.3 with one.
    t = resolve_targets([venv_python_for(version), "-c", "pass"], None, 0, 0)
    layout = t.mysqlclient_layout
    assert layout["verified"] and layout["mysql_offset"] == t.basicsize == 16, layout
    assert layout["lock"] == (tuple(map(int, t.mysqlclient_version.split(".")[:2])) >= (2, 3))
    assert t.gc_collector == "generational"
    assert {"py_close", "py_dealloc"} <= {p.role for p in t.probes}
