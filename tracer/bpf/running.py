"""Resolve the probes for a running process (``trace-quit --pid``) without executing anything.

A launched command is resolved by running its interpreter as the program's user
(resolve.py's find_spec helper). For a process that already runs, nothing is run at all:
running the target's interpreter as root would run whatever its site-packages and ``.pth``
files say, and for a chroot or a container it would run the chroot's files on the host
(tests/system/test_attach_security.py). What the probes need is read instead:

* the interpreter's code: the ``libpython3.X*.so`` it maps, or its executable (static build);
* version and build from that file's name (``3.X``, ``t`` for free-threaded) and its
  ``PY_VERSION`` string (the micro version), the object
  header from the build (compat.expected_header);
* ``MySQLdb/_mysql*.so`` and the client library: the files it has mapped when it imported
  MySQLdb already; otherwise (same root only) the search path it would import from: its
  script's directory, PYTHONPATH, its venv's and its prefix's site-packages, Debian's
  dist-packages, the user's site directory. The client library is then the loader's answer.

Every ELF is read through ``/proc/PID/map_files`` when mapped (the very file, whatever its name
now means) and only when regular and bounded (elf.read_regular). For a process in another root
only mapped files are used, and they are probed through map_files paths.
"""

import glob
import os
import re
import stat
import struct

from trace_quit.tracer.bpf import elf as elflib
from trace_quit.tracer.bpf.errors import BpfUnavailable

_LIBPYTHON = re.compile(r"^libpython3\.(\d+)(t?)(d?)\.so")
_EXE = re.compile(r"^python3\.(\d+)(t?)(d?)$")
_MYSQL_SO = re.compile(r"/MySQLdb/_mysql[^/]*\.so$")
_CLIENT = re.compile(r"^lib(mariadb|mysqlclient|perconaserverclient)\.so")
MAX_TEXT = 1 << 16


def mappings(pid):
    """[(start, end, path)] of ``pid``'s file mappings, the first mapping of each file."""
    seen, out = set(), []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            path = parts[5].rstrip("\n")
            if path in seen:
                continue
            seen.add(path)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end, path))
    return out


class Process:
    """What /proc says about ``pid``, and how to reach its files safely."""

    def __init__(self, pid, other_root):
        self.pid = pid
        self.other_root = other_root
        self.maps = mappings(pid)

    def probe_path(self, start, end, path):
        """The path to probe and read for a mapped file: its name when that is the very file, else map_files."""
        magic = "/proc/%d/map_files/%x-%x" % (self.pid, start, end)
        if self.other_root or path.endswith(" (deleted)"):
            return magic
        try:
            a, b = os.stat(magic), os.stat(path)
        except OSError:
            return magic
        return path if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) else magic

    def find(self, pattern, on="path"):
        for start, end, path in self.maps:
            subject = path if on == "path" else os.path.basename(path)
            if pattern.search(subject):
                return self.probe_path(start, end, path), path
        return None, None


def _regular(path):
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _read_text(path):
    try:
        return elflib.read_regular(path, MAX_TEXT).decode("utf-8", "replace")
    except (OSError, elflib.ElfError):
        return ""


def _search_dirs(proc, version, exe, env, cwd, argv):
    """Where the interpreter would look for MySQLdb (same root only; no code of it runs)."""
    minor = "python3.%d" % version[1]
    dirs = []
    script = next((a for a in argv[1:] if not a.startswith("-")), None) if argv else None
    if script and script.endswith(".py"):
        dirs.append(os.path.dirname(os.path.join(cwd, script)))
    dirs += [os.path.join(cwd, p) for p in env.get("PYTHONPATH", "").split(":") if p]
    bindir = os.path.dirname(exe)
    venv = os.path.dirname(bindir)
    if os.path.isfile(os.path.join(venv, "pyvenv.cfg")):
        dirs.append(os.path.join(venv, "lib", minor, "site-packages"))
        home = re.search(r"^home\s*=\s*(.+)$", _read_text(os.path.join(venv, "pyvenv.cfg")), re.M)
        if home:
            venv = os.path.dirname(home.group(1).strip())
    dirs += [os.path.join(venv, "lib", minor, "site-packages"), os.path.join(venv, "local", "lib", minor,
             "dist-packages"), os.path.join(venv, "lib", "python3", "dist-packages")]
    if env.get("HOME"):
        dirs.append(os.path.join(env["HOME"], ".local", "lib", minor, "site-packages"))
    return dirs


def _data_symbol(e, name):
    """The value of the exported data symbol ``name`` (Elf.symbol only knows functions), or None."""
    for sec in e.sections:
        if sec["type"] != 11 or not sec["entsize"] or sec["link"] >= len(e.sections):  # SHT_DYNSYM
            continue
        strtab = e.sections[sec["link"]]["offset"]
        for i in range(sec["size"] // sec["entsize"]):
            off = sec["offset"] + i * sec["entsize"]
            if off + 24 > len(e.data):
                break
            st_name, _info, _other, shndx, value, _size = struct.unpack_from("<IBBHQQ", e.data, off)
            if shndx and e.data[strtab + st_name:strtab + st_name + len(name) + 1] == name + b"\0":
                return value
    return None


def _micro(pyelf, version):
    """(micro,) read from the interpreter file, () when it does not say. It decides the collector on
    3.14 (compat.collector): ``Py_Version`` (3.11+, PY_VERSION_HEX), else a PY_VERSION string."""
    value = _data_symbol(pyelf, b"Py_Version")
    if value:
        try:
            off = pyelf.vaddr_to_offset(value)
            hexversion = struct.unpack_from("<I", pyelf.data, off)[0]
            if hexversion >> 16 == (version[0] << 8 | version[1]):
                return ((hexversion >> 8) & 0xFF,)
        except (elflib.ElfError, struct.error):
            pass
    m = re.search(rb"\x003\.%d\.(\d+)(?:[abrc+][0-9a-z+]*)?\x00" % version[1], pyelf.data)
    return (int(m.group(1)),) if m else ()


def resolve_running(pid, argv, env, cwd, exe, other_root):
    """Targets for the running process ``pid`` (resolve.Targets), executing nothing of it."""
    from trace_quit.tracer.bpf import compat, resolve

    proc = Process(pid, other_root)
    targets = resolve.Targets(argv=list(argv))
    targets.command = {"path": exe, "python": True}
    lib_path, lib_name = proc.find(_LIBPYTHON, on="basename")
    if lib_path is not None:
        m = _LIBPYTHON.search(os.path.basename(lib_name))
        static = False
    else:
        exe_map = [(s, e, p) for s, e, p in proc.maps if _EXE.search(os.path.basename(p.replace(" (deleted)", "")))]
        if not exe_map:
            raise BpfUnavailable("process %d maps no libpython3.X and its executable is not named python3.X: "
                                 "not a CPython this tracer can probe" % pid)
        lib_path, lib_name = proc.probe_path(*exe_map[0]), exe_map[0][2]
        m = _EXE.search(os.path.basename(lib_name.replace(" (deleted)", "")))
        static = True
    version = (3, int(m.group(1)))
    gil_disabled = m.group(2) == "t"
    pyelf = elflib.Elf(lib_path)
    version += _micro(pyelf, version)
    info = {"version": list(version), "executable": exe, "basicsize": compat.expected_header(gil_disabled),
            "gil_disabled": gil_disabled, "mysqldb": None, "mysql_so": None, "mysqlclient_version": None}
    so_path, so_name = proc.find(_MYSQL_SO)
    if so_path is None and not other_root:
        for d in _search_dirs(proc, version, exe, env, cwd, argv):
            # Regular files only: whatever else its user planted there (a FIFO, a link to a
            # device) is not a module the interpreter could import, and is never opened.
            found = [f for f in sorted(glob.glob(os.path.join(glob.escape(d), "MySQLdb", "_mysql*.so")))
                     if _regular(f)]
            if found:
                so_path = so_name = found[0]
                targets.notes.append("process %d has not imported MySQLdb yet: probing %s, found where it would "
                                     "import it from" % (pid, so_path))
                break
    if so_path is not None:
        package = os.path.dirname(so_name)
        info["mysql_so"] = so_path
        info["mysqldb"] = os.path.join(package, "__init__.py")
        if not other_root:
            v = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", _read_text(os.path.join(package, "release.py")))
            info["mysqlclient_version"] = v.group(1) if v else None
        client_path, _ = proc.find(_CLIENT, on="basename")
        if client_path is not None:
            info["client_elf"] = elflib.Elf(client_path)
        elif other_root:
            info["client_elf"] = None  # no search through the loader's paths of another root
            targets.notes.append("process %d runs in another root and has no MySQL client library mapped yet: "
                                 "no client probes" % pid)
    elif other_root:
        targets.notes.append("process %d runs in another root and has not imported MySQLdb: only its "
                             "mapped files are probed" % pid)
    resolve.add_interpreter(targets, exe, info, pyelf, lib_path, static, env, primary=True)
    return targets
