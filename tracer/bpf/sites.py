"""Probe sites: which instruction of which file each probe goes on, and the operands the BPF
programs read there (registers, USDT arguments, the collection function per CPython version).
"""

import dataclasses
import os
import re

from trace_quit.tracer.bpf import elf as elflib
from trace_quit.tracer.bpf import x86


#: Byte offsets of registers in x86-64 ``struct pt_regs`` (the uprobe program's context).
PT_REGS = {
    "r15": 0, "r14": 8, "r13": 16, "r12": 24, "bp": 32, "bx": 40, "r11": 48, "r10": 56,
    "r9": 64, "r8": 72, "ax": 80, "cx": 88, "dx": 96, "si": 104, "di": 112, "orig_ax": 120,
    "ip": 128, "cs": 136, "flags": 144, "sp": 152, "ss": 160,
}
_ARG_REGS = ("di", "si", "dx", "cx", "r8", "r9")  # System V x86-64 integer arguments

# USDT operand register spellings (AT&T, any width) -> pt_regs field.
_USDT_REGS = {}
for _base, _names in {
    "ax": "rax eax ax al", "bx": "rbx ebx bx bl", "cx": "rcx ecx cx cl", "dx": "rdx edx dx dl",
    "si": "rsi esi si sil", "di": "rdi edi di dil", "bp": "rbp ebp bp bpl", "sp": "rsp esp sp spl",
    "ip": "rip eip",
}.items():
    for _n in _names.split():
        _USDT_REGS[_n] = _base
for _i in range(8, 16):
    for _suffix in ("", "d", "w", "b"):
        _USDT_REGS["r%d%s" % (_i, _suffix)] = "r%d" % _i

#: The collection function per CPython version (read from each build's symbols), and which argument register holds
#: the generation (None: unknown). Verified by tests/system/test_bpf_gc_symbols.py against
#: gc.collect(n) on each pyenv version. 3.8 is built with GCC clones whose signatures depend
#: on the build: pyenv's 3.8.18 has collect.constprop.1(generation, ...) with the generation
#: in %rdi and collect.constprop.0(...) hard-wired to generation 2, so the bracket is kept
#: but the generation is reported unknown rather than guessed from a register.
GC_FUNCTIONS = [
    ((3, 8), ("collect",), 1),
    ((3, 8), ("collect.constprop.*",), None),
    ((3, 9), ("collect",), 1),
    ((3, 10), ("gc_collect_main",), 1),
    ((3, 11), ("gc_collect_main",), 1),
    ((3, 12), ("gc_collect_main",), 1),
    ((3, 13), ("gc_collect_main",), 1),
    # 3.14.5+ and 3.15 (the generational collector forward-ported): the 3.13 names. No pyenv build
    # of them here to verify against (Debian's have USDT, which is preferred): the note says so.
    ((3, 14), ("gc_collect_main", "_PyGC_Collect"), 1),
    ((3, 15), ("gc_collect_main", "_PyGC_Collect"), 1),
]


@dataclasses.dataclass
class ProbeSite:
    """One place to attach: a uprobe/uretprobe/USDT site in a file, and the BPF function for it."""

    role: str            # connect, connect_ret, close, close_ret, py_close, py_dealloc, gc_start, gc_done, finalize
    fn: str              # BPF function in probes.c
    path: str            # the file (real path) the uprobe is keyed on
    symbol: str          # symbol or provider:name for USDT
    offset: int          # file offset of the probed instruction
    how: str             # uprobe | uretprobe | usdt
    ref_ctr_offset: int = 0   # file offset of the USDT semaphore (kernel-managed), 0 if none
    why: str = ""        # why this offset (x86.choose_probe_offset), or the USDT argument spec
    skipped: str = None  # which calls the chosen offset does not see

    def describe(self):
        """A JSON-able dict for the capture header."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}


# ---------------------------------------------------------------------------------------
# Probe sites


def _site(role, fn, e, symbol, how, choose=True):
    """A ProbeSite for ``symbol`` in ELF ``e`` at its chosen offset, or None if the symbol is absent."""
    s = e.symbol(symbol)
    if s is None:
        return None
    off = e.vaddr_to_offset(s.value)
    if choose:
        delta, why, skipped = x86.choose_probe_offset(e.read(off, x86.MAX_SCAN))
    else:
        delta, why, skipped = 0, "+0 (function entry)", None
    return ProbeSite(role=role, fn=fn, path=os.path.realpath(e.path), symbol=symbol, offset=off + delta,
                     how=how, why=why, skipped=skipped)


def parse_usdt_arg(spec):
    """One USDT operand (``-4@112(%rsp)``, ``-8@%r12``, ``4@$5``) as -D parameters, or None."""
    m = re.match(r"^(-?)(\d+)@(.*)$", spec.strip())
    if not m:
        return None
    signed, size, loc = bool(m.group(1)), int(m.group(2)), m.group(3)
    if size not in (1, 2, 4, 8):
        return None
    m2 = re.match(r"^%(\w+)$", loc)
    if m2 and m2.group(1) in _USDT_REGS and _USDT_REGS[m2.group(1)] != "ip":
        return {"KIND": 1, "REG": PT_REGS[_USDT_REGS[m2.group(1)]], "OFF": 0, "SIZE": size, "SIGNED": int(signed)}
    m2 = re.match(r"^(-?(?:0x[0-9a-fA-F]+|\d+))?\(%(\w+)\)$", loc)
    if m2 and m2.group(2) in _USDT_REGS and _USDT_REGS[m2.group(2)] != "ip":
        return {"KIND": 2, "REG": PT_REGS[_USDT_REGS[m2.group(2)]], "OFF": int(m2.group(1) or "0", 0),
                "SIZE": size, "SIGNED": int(signed)}
    m2 = re.match(r"^\$(-?\d+)$", loc)
    if m2:
        return {"KIND": 3, "REG": 0, "OFF": int(m2.group(1)), "SIZE": size, "SIGNED": int(signed)}
    return None  # rip-relative and indexed operands: not supported, reported as missing


def _usdt_sites(e, targets):
    """GC start/done sites from USDT notes (python:gc__start, python:gc__done), or False."""
    probes = {p.name: p for p in e.usdt_probes() if p.provider == "python"}
    if "gc__start" not in probes or "gc__done" not in probes:
        return False
    sites, args = [], {}
    for role, name, fn, prefix in (("gc_start", "gc__start", "on_gc_start_usdt", "GC_START"),
                                   ("gc_done", "gc__done", "on_gc_done_usdt", "GC_DONE")):
        p = probes[name]
        arg = parse_usdt_arg(p.args.split()[0]) if p.args.strip() else None
        if arg is None:
            targets.notes.append("USDT python:%s argument %r is not decodable; its value is reported as -1" % (
                name, p.args))
            arg = {"KIND": 0, "REG": 0, "OFF": 0, "SIZE": 8, "SIGNED": 1}
        for k, v in arg.items():
            args["%s_ARG_%s" % (prefix, k)] = v
        ref = e.vaddr_to_offset(p.semaphore) if p.semaphore else 0
        sites.append(ProbeSite(role=role, fn=fn, path=os.path.realpath(e.path), symbol="python:" + name,
                               offset=e.vaddr_to_offset(p.pc), how="usdt", ref_ctr_offset=ref,
                               why="USDT operand %s; semaphore managed by the kernel (ref_ctr_offset)" % p.args))
    targets.gc_args.update(args)
    return sites


def _gc_symbol_sites(e, version, targets):
    """GC start/done from the version's collection function (entry + uretprobe), or []."""
    rows = [(names, argno) for ver, names, argno in GC_FUNCTIONS
            if version is not None and tuple(version[:2]) == ver]
    if not rows:
        # Unknown (newer) version: try the most recent known name, say so.
        rows = [(("gc_collect_main",), 1)]
        targets.notes.append("Python %s is newer than the GC table; trying gc_collect_main(tstate, generation)" % (
            ".".join(map(str, version)) if version else "?"))
    found, argno = [], None
    for names, argno in rows:
        for pattern in names:
            if pattern.endswith("*"):
                found = e.symbols_matching(lambda n: n.startswith(pattern[:-1]))
            else:
                s = e.symbol(pattern)
                found = [s] if s is not None else []
            if found:
                break
        if found:
            break
    if found and argno is None:
        targets.notes.append("GC brackets from %s: generation not readable in this build (reported unknown)" % (
            ", ".join(s.name for s in found)))
    sites = []
    for s in found:
        entry = _site("gc_start", "on_gc_start_sym", e, s.name, "uprobe")
        ret = _site("gc_done", "on_gc_done_sym", e, s.name, "uretprobe")
        sites += [entry, ret]
    if sites:
        targets.gc_args["GC_SYM_GEN_REG"] = PT_REGS[_ARG_REGS[argno]] if argno is not None else -1
    return sites


def _add_probe(targets, site):
    """Append ``site`` unless the same program is already on the same instruction."""
    if site is None:
        return False
    for p in targets.probes:
        if (p.path, p.offset, p.how, p.fn) == (site.path, site.offset, site.how, site.fn):
            return False
    targets.probes.append(site)
    return True


def last_errno_offset(client):
    """Offset of ``net.last_errno`` in MYSQL, read from the library's own ``mysql_errno``, or None.

    Both libmariadb and MySQL's client compile ``mysql_errno(mysql)`` to a NULL check and
    ``mov disp(%rdi),%eax`` (disp = offsetof(MYSQL, net.last_errno)): 0x90 in libmariadb3.
    """
    s = client.symbol("mysql_errno")
    if s is None:
        return None
    try:
        code = client.read(client.vaddr_to_offset(s.value), 32)
    except elflib.ElfError:
        return None
    for i in range(len(code) - 2):
        if code[i] == 0x8B and code[i + 1] == 0x87 and i + 6 <= len(code):       # mov disp32(%rdi),%eax
            return int.from_bytes(code[i + 2:i + 6], "little", signed=True)
        if code[i] == 0x8B and code[i + 1] == 0x47:                               # mov disp8(%rdi),%eax
            return int.from_bytes(code[i + 2:i + 3], "little", signed=True)
    return None
