/* ---- CPython: GC brackets and finalisation -------------------------------------------- */

// A collection starts on this thread: open its bracket (read at mysql_close) and say so.
// Shared by the USDT and the symbol variants; only one of them is compiled per run.
static __always_inline void gc_begin(u32 tid, s32 gen, u64 sp)
{
    struct gc_state gs = {};
    gs.gen = gen;
    gs.depth = 1;
    gs.sp = sp;
    gc_thread.update(&tid, &gs);
    struct event *e = reserve(EV_GC_START);
    if (e) {
        e->gc.gen = gen;
        submit(e);
    }
}

int on_gc_start_usdt(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    gc_begin((u32)id, (s32)usdt_arg(ctx, cfg(CFG_GC_START_ARG), cfg(CFG_GC_START_ARG + 1),
                                    cfg(CFG_GC_START_ARG + 2), cfg(CFG_GC_START_ARG + 3),
                                    cfg(CFG_GC_START_ARG + 4)), 0);
    return 0;
}

int on_gc_done_usdt(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct gc_state *gs = gc_thread.lookup(&tid);
    if (!gs)
        return 0;   // its start came before we attached (--pid mid-collection): no bracket to close
    struct event *e = reserve(EV_GC_DONE);
    if (e) {
        e->gc.collected = usdt_arg(ctx, cfg(CFG_GC_DONE_ARG), cfg(CFG_GC_DONE_ARG + 1),
                                   cfg(CFG_GC_DONE_ARG + 2), cfg(CFG_GC_DONE_ARG + 3),
                                   cfg(CFG_GC_DONE_ARG + 4));
        e->gc.gen = gs->gen;
        submit(e);
    }
    gc_thread.delete(&tid);
    return 0;
}

/* The symbol bracket is the outermost collection function's frame, identified by the stack
 * pointer at its entry (the return probe sees that + 8, the return address popped). So the
 * bracket is right whatever the moment of attach (--pid mid-collection):
 *  - session.attach places the return probes before the entry probes, so an entry we see
 *    always has its return seen; a return without a seen entry finds no bracket (ignored),
 *    or a nested one's and closes only when its own frame returns;
 *  - an entry at or above the open bracket's frame cannot be nested in it: that bracket is
 *    stale (its return was missed) and the new collection replaces it.
 * Pinned by tests/system/test_bpf_attach_midcollection.py. */
int on_gc_start_sym(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    u64 sp = PT_REGS_SP(ctx);
    struct gc_state *cur = gc_thread.lookup(&tid);
    if (cur && cur->depth > 0 && sp < cur->sp) {
        cur->depth += 1;    // deeper on the same stack: nested in the open collection
        return 0;
    }
    s64 gen_reg = cfg(CFG_GC_SYM_GEN_REG);   // -1: the build's clone of the collection function hides it
    gc_begin(tid, gen_reg >= 0 ? (s32)reg_var(ctx, gen_reg) : -1, sp);
    return 0;
}

int on_gc_done_sym(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct gc_state *gs = gc_thread.lookup(&tid);
    if (!gs)
        return 0;
    if (gs->depth > 1 && PT_REGS_SP(ctx) < gs->sp + 8) {
        gs->depth -= 1;     // a nested call returned; the bracket's own frame is still live
        return 0;
    }
    struct event *e = reserve(EV_GC_DONE);
    if (e) {
        e->gc.collected = PT_REGS_RC(ctx);  // Py_ssize_t: collected + uncollectable
        e->gc.gen = gs->gen;
        submit(e);
    }
    gc_thread.delete(&tid);
    return 0;
}

/* The cause contract (README, "Causes"): shutdown begins after the program's last atexit
 * handler has run, when the interpreter is finalising (sys.is_finalizing()); what atexit
 * handlers drop is refcount or gc. Py_FinalizeEx entry only says which thread will finalise
 * (it first joins non-daemon threads and runs the atexit handlers); on_after_atexit, at the
 * first call after the handlers (resolve.AFTER_ATEXIT), starts shutdown on that thread.
 * Without such a site (AFTER_ATEXIT 0) shutdown starts at Py_FinalizeEx entry, as it did.
 * Pinned by tests/system/test_bpf_known_causes.py (atexit rows: refcount 2, gc 3). */
static __always_inline void start_shutdown(u32 tgid, u32 tid)
{
    struct fin_state fs = {};
    fs.tid = tid;
    fs.finalizing = 1;
    finalizing.update(&tgid, &fs);
    struct event *e = reserve(EV_FINALIZE);
    if (e)
        submit(e);
}

int on_finalize(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_traced(tgid))
        return 0;
    if (cfg(CFG_AFTER_ATEXIT) > 0) {
        struct fin_state fs = {};
        fs.tid = (u32)id;
        finalizing.update(&tgid, &fs);
    } else {
        start_shutdown(tgid, (u32)id);
    }
    return 0;
}

/* Also reached outside finalisation (3.9-3.12's _PyThreadState_DeleteExcept runs in a fork
 * child): only the thread that entered Py_FinalizeEx counts, once. */
int on_after_atexit(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
    struct fin_state *fs = finalizing.lookup(&tgid);
    if (!fs || fs->tid != tid || fs->finalizing)
        return 0;
    start_shutdown(tgid, tid);
    return 0;
}
