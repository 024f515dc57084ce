"""A small read-only ELF64 (x86-64, little-endian) reader: what probe placement needs.

Symbols from ``.symtab`` and ``.dynsym`` (with the default-version bit from ``.gnu.version``),
``DT_NEEDED``/``DT_RPATH``/``DT_RUNPATH``/``DT_SONAME``, ``PT_LOAD`` segments to turn a
virtual address into the file offset a uprobe wants, and SystemTap SDT notes (USDT).

Pure Python on purpose: the target files are untrusted, so nothing here executes them
(no ``ldd``), and every read is bounds-checked (a truncated or hostile file raises
``ElfError``, never an IndexError deep in a caller).
"""

import os
import stat
import struct

ET_EXEC = 2
ET_DYN = 3
PT_LOAD = 1
SHT_SYMTAB = 2
SHT_DYNSYM = 11
SHT_NOTE = 7
SHT_GNU_VERSYM = 0x6FFFFFFF
STT_FUNC = 2
STT_GNU_IFUNC = 10
SHN_UNDEF = 0
DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 5, 14, 15, 29
NT_STAPSDT = 3


class ElfError(Exception):
    """The file is not an ELF64 little-endian object we can read."""


class Symbol:
    """One defined symbol: name, st_value (virtual address), size, type, default version."""

    __slots__ = ("name", "value", "size", "type", "dynamic", "default")

    def __init__(self, name, value, size, type_, dynamic, default):
        self.name, self.value, self.size, self.type = name, value, size, type_
        self.dynamic, self.default = dynamic, default

    def __repr__(self):
        return "Symbol(%s@%#x)" % (self.name, self.value)


class UsdtProbe:
    """One SystemTap SDT note: provider, name, pc and semaphore (virtual addresses), arg spec."""

    __slots__ = ("provider", "name", "pc", "semaphore", "args")

    def __init__(self, provider, name, pc, semaphore, args):
        self.provider, self.name, self.pc, self.semaphore, self.args = provider, name, pc, semaphore, args


#: No library we probe comes near this; a file that does is not one (or is /dev/zero's kind).
MAX_SIZE = 1 << 30


def read_regular(path, limit):
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else ElfError.

    Opened non-blocking (a FIFO planted where a library should be cannot hang us) and checked
    with fstat before any read (a device such as /dev/zero cannot eat our memory)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ElfError("%s is not a regular file" % path)
        if st.st_size > limit:
            raise ElfError("%s is larger than %d bytes" % (path, limit))
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class Elf:
    """An ELF file read once into memory (libraries we probe are a few MB at most)."""

    def __init__(self, path):
        self.path = path
        self.data = read_regular(path, MAX_SIZE)
        d = self.data
        if len(d) < 64 or d[:4] != b"\x7fELF":
            raise ElfError("%s is not an ELF file" % path)
        if d[4] != 2 or d[5] != 1:
            raise ElfError("%s is not a 64-bit little-endian ELF file" % path)
        (self.type, self.machine, _v, self.entry, self.phoff, self.shoff, _fl, _eh, self.phentsize,
         self.phnum, self.shentsize, self.shnum, self.shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", d, 16)
        self.segments = []  # (p_type, p_offset, p_vaddr, p_filesz, p_memsz, p_flags)
        for i in range(self.phnum):
            off = self.phoff + i * self.phentsize
            self._check(off, 56)
            p_type, p_flags, p_offset, p_vaddr, _pa, p_filesz, p_memsz, _al = struct.unpack_from("<IIQQQQQQ", d, off)
            self.segments.append((p_type, p_offset, p_vaddr, p_filesz, p_memsz, p_flags))
        self.sections = []  # dicts: name, type, addr, offset, size, link, entsize
        if self.shoff and self.shnum:
            raw = []
            for i in range(self.shnum):
                off = self.shoff + i * self.shentsize
                self._check(off, 64)
                raw.append(struct.unpack_from("<IIQQQQIIQQ", d, off))
            names = raw[self.shstrndx] if self.shstrndx < len(raw) else None
            for (name, typ, _fl, addr, offset, size, link, _info, _al, entsize) in raw:
                self.sections.append({
                    "name": self._cstr(names[4] + name) if names else "",
                    "type": typ, "addr": addr, "offset": offset, "size": size,
                    "link": link, "entsize": entsize,
                })
        self._symbols = None

    # --- raw access ---------------------------------------------------------------------
    def _check(self, off, size):
        if off < 0 or off + size > len(self.data):
            raise ElfError("%s is truncated (read of %d bytes at %#x)" % (self.path, size, off))

    def _cstr(self, off):
        if off < 0 or off >= len(self.data):
            return ""
        end = self.data.find(b"\0", off)
        return self.data[off:end if end >= 0 else len(self.data)].decode("utf-8", "replace")

    def section(self, name):
        """The first section called ``name``, or None."""
        for s in self.sections:
            if s["name"] == name:
                return s
        return None

    def read(self, offset, size):
        """``size`` bytes at file ``offset`` (bounds-checked)."""
        self._check(offset, size)
        return self.data[offset:offset + size]

    # --- addresses ----------------------------------------------------------------------
    def vaddr_to_offset(self, vaddr):
        """The file offset of virtual address ``vaddr`` (what a uprobe on this file wants)."""
        for p_type, p_offset, p_vaddr, p_filesz, _m, _f in self.segments:
            if p_type == PT_LOAD and p_vaddr <= vaddr < p_vaddr + p_filesz:
                return vaddr - p_vaddr + p_offset
        raise ElfError("address %#x is not file-backed in any PT_LOAD of %s" % (vaddr, self.path))

    # --- dynamic section ----------------------------------------------------------------
    def dynamic(self):
        """{'needed': [...], 'rpath': str|None, 'runpath': str|None, 'soname': str|None}."""
        out = {"needed": [], "rpath": None, "runpath": None, "soname": None}
        dyn = self.section(".dynamic")
        if dyn is None:
            for p_type, p_offset, _va, p_filesz, _m, _f in self.segments:
                if p_type == 2:  # PT_DYNAMIC
                    dyn = {"offset": p_offset, "size": p_filesz}
        if dyn is None:
            return out
        entries = []
        for off in range(dyn["offset"], dyn["offset"] + dyn["size"], 16):
            self._check(off, 16)
            tag, val = struct.unpack_from("<qQ", self.data, off)
            if tag == 0:
                break
            entries.append((tag, val))
        strtab = None
        for tag, val in entries:
            if tag == DT_STRTAB:
                strtab = self.vaddr_to_offset(val)
        if strtab is None:
            return out
        for tag, val in entries:
            if tag == DT_NEEDED:
                out["needed"].append(self._cstr(strtab + val))
            elif tag == DT_RPATH:
                out["rpath"] = self._cstr(strtab + val)
            elif tag == DT_RUNPATH:
                out["runpath"] = self._cstr(strtab + val)
            elif tag == DT_SONAME:
                out["soname"] = self._cstr(strtab + val)
        return out

    # --- symbols ------------------------------------------------------------------------
    def symbols(self):
        """Every defined function symbol (name -> list of Symbol), .symtab and .dynsym merged."""
        if self._symbols is not None:
            return self._symbols
        table = {}
        for idx, sec in enumerate(self.sections):
            if sec["type"] not in (SHT_SYMTAB, SHT_DYNSYM) or not sec["entsize"]:
                continue
            dynamic = sec["type"] == SHT_DYNSYM
            strsec = self.sections[sec["link"]] if sec["link"] < len(self.sections) else None
            if strsec is None:
                continue
            versym = None
            if dynamic:
                for vs in self.sections:
                    if vs["type"] == SHT_GNU_VERSYM and vs["link"] == idx:
                        versym = vs
            n = sec["size"] // sec["entsize"]
            for i in range(n):
                off = sec["offset"] + i * sec["entsize"]
                self._check(off, 24)
                st_name, st_info, _o, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", self.data, off)
                typ = st_info & 0xF
                if st_shndx == SHN_UNDEF or typ not in (STT_FUNC, STT_GNU_IFUNC) or not st_value:
                    continue
                name = self._cstr(strsec["offset"] + st_name)
                default = True
                if versym is not None:
                    voff = versym["offset"] + 2 * i
                    if voff + 2 <= len(self.data):
                        default = not (struct.unpack_from("<H", self.data, voff)[0] & 0x8000)
                table.setdefault(name, []).append(Symbol(name, st_value, st_size, typ, dynamic, default))
        self._symbols = table
        return table

    def has_symtab(self):
        """Whether the file still has its static symbol table (is not stripped)."""
        return any(s["type"] == SHT_SYMTAB for s in self.sections)

    def symbol(self, name):
        """The address-unique Symbol called ``name`` (the default version when several), or None."""
        cands = self.symbols().get(name) or []
        if not cands:
            return None
        addrs = {c.value for c in cands}
        if len(addrs) == 1:
            return cands[0]
        defaults = [c for c in cands if c.default]
        return defaults[0] if defaults else cands[0]

    def symbols_matching(self, predicate):
        """Symbols whose name satisfies ``predicate``, one per address."""
        out, seen = [], set()
        for name, cands in sorted(self.symbols().items()):
            if predicate(name):
                for c in cands:
                    if c.value not in seen:
                        seen.add(c.value)
                        out.append(c)
        return out

    # --- USDT (SystemTap SDT notes) -----------------------------------------------------
    def usdt_probes(self):
        """The SDT probes in ``.note.stapsdt``, addresses adjusted for prelink as gdb does."""
        sec = self.section(".note.stapsdt")
        if sec is None:
            return []
        base_sec = self.section(".stapsdt.base")
        out = []
        off, end = sec["offset"], sec["offset"] + sec["size"]
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", self.data, off)
            name_off = off + 12
            desc_off = name_off + ((namesz + 3) & ~3)
            nxt = desc_off + ((descsz + 3) & ~3)
            self._check(desc_off, descsz)
            name = self.data[name_off:name_off + namesz].rstrip(b"\0")
            if ntype == NT_STAPSDT and name == b"stapsdt" and descsz >= 24:
                pc, base, sem = struct.unpack_from("<QQQ", self.data, desc_off)
                strings = self.data[desc_off + 24:desc_off + descsz].split(b"\0")
                provider = strings[0].decode() if len(strings) > 0 else ""
                pname = strings[1].decode() if len(strings) > 1 else ""
                args = strings[2].decode() if len(strings) > 2 else ""
                if base_sec is not None and base and base_sec["addr"] != base:
                    delta = base_sec["addr"] - base
                    pc += delta
                    if sem:
                        sem += delta
                out.append(UsdtProbe(provider, pname, pc, sem, args))
            off = nxt
        return out


# ---------------------------------------------------------------------------------------
# ld.so.cache: how the dynamic loader finds a DT_NEEDED name that no RPATH/RUNPATH covers.

_CACHE_NEW_MAGIC = b"glibc-ld.so.cache1.1"
_CACHE_OLD_MAGIC = b"ld.so-1.7.0"
_FLAG_X8664_LIBC6 = 0x0303  # FLAG_ELF_LIBC6 | FLAG_X8664_LIB64


def ld_cache(path="/etc/ld.so.cache"):
    """{soname: path} for x86-64 libraries in the loader cache (empty when unreadable)."""
    try:
        with open(path, "rb") as f:
            d = f.read()
    except OSError:
        return {}
    start = 0
    if d.startswith(_CACHE_OLD_MAGIC):
        nlibs = struct.unpack_from("<I", d, 12)[0]
        start = (16 + nlibs * 12 + 7) & ~7
    if d[start:start + 20] != _CACHE_NEW_MAGIC:
        return {}
    nlibs = struct.unpack_from("<I", d, start + 20)[0]
    out = {}

    def cstr(o):
        e = d.find(b"\0", o)
        return d[o:e].decode("utf-8", "replace") if 0 <= o < len(d) and e > 0 else ""

    for i in range(nlibs):
        off = start + 48 + i * 24
        if off + 24 > len(d):
            break
        flags, key, value = struct.unpack_from("<iII", d, off)
        if (flags & 0xFFFF) != _FLAG_X8664_LIBC6:
            continue
        # String offsets are from the start of the file in the new-only format and from
        # the start of the new header when an old-format table precedes it.
        name, target = cstr(key if not start else start + key), cstr(value if not start else start + value)
        out.setdefault(name, target)
    return out
