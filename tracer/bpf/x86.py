"""Choosing where in a function's first bytes to put a uprobe (x86-64).

Why: the kernel handles a uprobe hit either by *emulating* the probed instruction (push of
a register, jumps, calls, nops on recent kernels) or by *single-stepping* a copy of it out
of line, which costs an extra trap. On this VM a hit on libmariadb's ``mysql_close`` (whose
first instruction is ``test %rdi,%rdi``) cost ~16 us single-stepped against ~0.9 us on the
``push %rbp`` nine bytes in (tests/system/test_bpf_probe_cost.py measures it). So: probe the
first ``push`` if everything before it leaves the argument registers and the stack pointer untouched (``endbr64``, nops,
``test``/``cmp`` of registers) and the only branch before it is the NULL-first-argument
early return ``test %rdi,%rdi; je`` (the skipped calls then do nothing worth seeing, e.g.
``mysql_close(NULL)``). Anything else: probe +0 and say so.

Because the stack pointer is unchanged up to the chosen offset, a uretprobe placed there
still finds the return address at ``(%rsp)``, so entry and return share one emulated site.

This is a deliberately tiny decoder for those prologue instructions only; anything it does
not recognise ends the scan (never a guess).
"""

#: How far into a function we look for an emulated instruction.
MAX_SCAN = 16

_REG64 = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]


def _decode(code, i):
    """(length, mnemonic, info) of the instruction at ``code[i]``, or None if not a known prologue one."""
    b = code[i:]
    if len(b) >= 4 and b[:4] == b"\xf3\x0f\x1e\xfa":
        return 4, "endbr64", {}
    if b[:1] == b"\x90":
        return 1, "nop", {}
    if b[:2] == b"\x66\x90":
        return 2, "nop", {}
    # Multi-byte nops: 0f 1f /0 with the common ModRM forms compilers emit for padding.
    for pat in (b"\x0f\x1f\x00", b"\x0f\x1f\x40\x00", b"\x0f\x1f\x44\x00\x00",
                b"\x66\x0f\x1f\x44\x00\x00", b"\x0f\x1f\x80\x00\x00\x00\x00",
                b"\x0f\x1f\x84\x00\x00\x00\x00\x00", b"\x66\x0f\x1f\x84\x00\x00\x00\x00\x00"):
        if b[:len(pat)] == pat:
            return len(pat), "nop", {}
    if b[:1] and 0x50 <= b[0] <= 0x57:
        return 1, "push", {"reg": _REG64[b[0] - 0x50]}
    if len(b) >= 2 and b[0] == 0x41 and 0x50 <= b[1] <= 0x57:
        return 2, "push", {"reg": _REG64[8 + b[1] - 0x50]}
    # test r/m64, r64 (REX.W 85 /r) with mod == 11: register-register, writes flags only.
    if len(b) >= 3 and b[0] in (0x48, 0x49, 0x4C, 0x4D) and b[1] == 0x85 and (b[2] >> 6) == 3:
        rex = b[0]
        rm = (b[2] & 7) | (8 if rex & 1 else 0)
        reg = ((b[2] >> 3) & 7) | (8 if rex & 4 else 0)
        return 3, "test", {"a": _REG64[rm], "b": _REG64[reg]}
    # je/jne rel8 and rel32: a branch before the chosen site means skipped calls.
    if len(b) >= 2 and b[0] in (0x74, 0x75):
        return 2, "je" if b[0] == 0x74 else "jne", {}
    if len(b) >= 6 and b[0] == 0x0F and b[1] in (0x84, 0x85):
        return 6, "je" if b[1] == 0x84 else "jne", {}
    return None


def choose_probe_offset(code):
    """Pick the offset (0..MAX_SCAN) for an entry uprobe on a function starting with ``code``.

    Returns ``(offset, why, skipped)``: ``why`` is a one-line explanation recorded in the
    session's description; ``skipped`` says which calls the chosen site does not see
    (None when it sees all of them).
    """
    first = _decode(code, 0)
    if first is not None and first[1] == "push":
        return 0, "+0 is push %%%s (emulated by the kernel)" % first[2]["reg"], None
    i = 0
    seen = []
    last_test_rdi = False
    skipped = None
    while i < min(len(code), MAX_SCAN):
        d = _decode(code, i)
        if d is None:
            break
        length, mnem, info = d
        if mnem == "push":
            why = "+%d is push %%%s after %s; +0 would be single-stepped" % (i, info["reg"], "; ".join(seen))
            return i, why, skipped
        if mnem in ("je", "jne"):
            # Only the "if (arg1 == NULL) return" shape is allowed before the probe site.
            if not (mnem == "je" and last_test_rdi):
                break
            skipped = "calls with a NULL first argument (they return at once)"
        last_test_rdi = mnem == "test" and info.get("a") == "rdi" and info.get("b") == "rdi"
        seen.append(mnem + (" %%%s,%%%s" % (info["a"], info["b"]) if mnem == "test" else ""))
        i += length
    what = _decode(code, 0)
    return 0, "+0 (%s); no emulated instruction found safely within %d bytes: single-stepped" % (
        what[1] if what else "bytes %s" % code[:4].hex(), MAX_SCAN), None
