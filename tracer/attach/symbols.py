"""Where the interpreter's entry points are in a running process: ELF .dynsym + /proc/PID/maps.

Computed before the thread is held (tracer/attach/ptrace.py), from the very files mapped
(``/proc/PID/map_files``), so the hold lasts only for the calls themselves: a few milliseconds
(a debugger reading the interpreter's symbol tables while the program was stopped took
~1-1.5 s here).
"""

from trace_quit.tracer.bpf.elf import Elf, ElfError

#: The functions the injection calls, all exported by every CPython 3.8+ (stable ABI)...
PYTHON = ("Py_AddPendingCall", "PyRun_SimpleString")
#: ... and the C library's mmap/munmap (system call wrappers, no lock) for the page that carries
#: the bootstrap's text: never malloc, whose lock a stopped thread may hold.
LIBC = ("mmap", "munmap")


class SymbolError(Exception):
    """The process's interpreter does not export what the injection needs."""


def _mappings(pid):
    """[(start, end, file offset, path)] of the file-backed mappings of ``pid``."""
    out = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end, int(parts[2], 16), parts[5].rstrip("\n")))
    return out


def resolve(pid):
    """{name: address in ``pid``} for PYTHON and LIBC; SymbolError when one is missing."""
    maps = _mappings(pid)
    found = {}
    _find(pid, maps, lambda base: "python" in base, PYTHON, found)
    _find(pid, maps, lambda base: base.startswith("libc.so") or base.startswith("libc-"), LIBC, found)
    missing = [n for n in PYTHON + LIBC if n not in found]
    if missing:
        raise SymbolError("the interpreter exports no %s" % ", ".join(missing))
    return found


def _find(pid, maps, wanted, names, found):
    files = []
    for _s, _e, _o, path in maps:
        if path not in files and wanted(path.rsplit("/", 1)[-1]):
            files.append(path)
    for path in files:
        # Through map_files: the very file mapped (even if replaced or deleted since), as root.
        first = next(m for m in maps if m[3] == path)
        # Never by its name: in a chroot the name means another file, and it may be replaced.
        try:
            elf = Elf("/proc/%d/map_files/%x-%x" % (pid, first[0], first[1]))
        except (OSError, ElfError):
            continue
        for name in names:
            if name in found:
                continue
            sym = elf.symbol(name)
            if sym is None or not sym.value:
                continue
            try:
                offset = elf.vaddr_to_offset(sym.value)
            except ElfError:
                continue
            for start, end, map_off, map_path in maps:
                if map_path == path and map_off <= offset < map_off + (end - start):
                    found[name] = start + offset - map_off
                    break
