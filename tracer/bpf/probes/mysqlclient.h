/* ---- mysqlclient: which Python-level function is about to call mysql_close ---------- */

static __always_inline int py_enter(struct pt_regs *ctx, u32 kind)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct py_entry pe = {};
    pe.self = PT_REGS_PARM1(ctx);
    pe.ts = bpf_ktime_get_ns();
    pe.kind = kind;
    py_last.update(&tid, &pe);
    return 0;
}

int on_py_close(struct pt_regs *ctx) { return py_enter(ctx, PY_CLOSE); }
int on_py_dealloc(struct pt_regs *ctx) { return py_enter(ctx, PY_DEALLOC); }
