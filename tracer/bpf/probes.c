/*
 * trace-quit: the kernel side. Why each COM_QUIT was sent, decided where it happens.
 *
 * Loaded by tracer/bpf/session.py (bcc compiles it at run time); parameters arrive as
 * -D flags, chosen per run by tracer/bpf/resolve.py:
 *   CONN_OFFSET            object.__basicsize__ of the traced interpreter: the MYSQL* that
 *                          mysql_close receives is self + CONN_OFFSET (mysqlclient's
 *                          _mysql_ConnectionObject starts with PyObject_HEAD, then MYSQL).
 *   RINGBUF_PAGES          ring buffer size in pages (power of two).
 *   GC_START_ARG_*,        how to read USDT python:gc__start's generation and gc__done's
 *   GC_DONE_ARG_*          collected count: KIND 1 register, 2 memory at reg+OFF, 3 constant;
 *                          REG is a byte offset into struct pt_regs.
 *   GC_SYM_GEN_REG         pt_regs offset of the generation argument of the collection
 *                          function (gc_collect_main & co) when there is no USDT; -1 when
 *                          unknown (3.8's GCC clones collect.constprop.N).
 *   TP_*                   field offsets of the tracepoints used, read from tracefs format
 *                          files at load time (sched_process_exit changed across kernels).
 *
 * Attribution at mysql_close (no uretprobes on CPython or mysqlclient code needed):
 *   _mysql_ConnectionObject_close(self) / _dealloc(self) entries store, per thread, the
 *   last {kind, self}. mysqlclient calls mysql_close(&self->connection) from exactly one of
 *   them (FACTS.md), with no Python code in between, so at mysql_close(mysql):
 *     mysql == last.self + CONN_OFFSET and kind == close        -> explicit_close
 *     ... kind == dealloc, on the thread that entered Py_FinalizeEx -> shutdown
 *     ... kind == dealloc, inside a GC collection on this thread  -> gc (+ generation)
 *     ... kind == dealloc otherwise                              -> refcount
 *     no match                                                   -> unknown
 *   "shutdown" is per thread on purpose: Py_FinalizeEx first joins non-daemon threads
 *   (threading._shutdown) and those keep doing real work, so a GC on a worker during
 *   that join is still a gc, not a shutdown.
 *
 * Wire: while a thread is inside mysql_close (between its entry and return probes), its
 * write/writev/sendto/sendmsg calls are recorded with their length and first 16 bytes.
 * COM_QUIT is exactly 01 00 00 00 01; a TLS record header (0x14..0x17, 0x03) means the
 * bytes are encrypted. The syscall tracepoints are system wide, but a thread not inside a
 * traced mysql_close costs one hash lookup.
 *
 * Process tree: `traced` holds tgids, seeded by user space with the corked root pid,
 * extended at task_newtask for non-thread clones of a traced process, pruned at exit.
 *
 * Output: one ring buffer, submitted with BPF_RB_NO_WAKEUP (user space drains it every
 * ~20 ms; waking the reader per event costs ~7x more, FACTS.md). Every reserve is counted
 * in `counters`: [0] emitted, [1] dropped (reserve failed: buffer full).
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#define EV_CONNECT 1
#define EV_CLOSE 2
#define EV_CLOSE_RET 3
#define EV_WIRE 4
#define EV_GC_START 5
#define EV_GC_DONE 6
#define EV_FINALIZE 7
#define EV_FORK 8
#define EV_EXIT 9

#define CAUSE_UNKNOWN 0
#define CAUSE_EXPLICIT_CLOSE 1
#define CAUSE_REFCOUNT 2
#define CAUSE_GC 3
#define CAUSE_SHUTDOWN 4

#define PY_CLOSE 1
#define PY_DEALLOC 2

#define WIRE_NOT_SENT 0     // no send on this thread during mysql_close
#define WIRE_CONFIRMED 1    // a 5-byte 01 00 00 00 01 was sent
#define WIRE_ENCRYPTED 2    // only TLS records were sent
#define WIRE_OTHER 3        // bytes were sent but none was a COM_QUIT

#define HEAD_LEN 16

struct event {
    u64 ts;         // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    u64 conn;       // MYSQL*
    s64 val;        // connect: ok; close_ret: sends; wire: len; gc_start: gen; gc_done: collected; fork: child
    s64 val2;       // connect/close_ret: entry ts; close: self (the Python object); wire: fd
    u32 pid;        // tgid
    u32 tid;        // kernel thread id
    u8 kind;        // EV_*
    u8 cause;       // close: CAUSE_*
    u8 wire;        // close_ret: WIRE_*
    u8 pad;
    s32 gen;        // close (gc) and gc_done: generation, -1 unknown
    u32 hlen;       // wire: bytes copied into head
    u8 head[HEAD_LEN];  // wire: first bytes sent
};

struct py_entry {
    u64 self;       // the _mysql.connection object
    u64 ts;
    u32 kind;       // PY_CLOSE / PY_DEALLOC
};

struct gc_state {
    s32 gen;
    u32 depth;      // nesting of the symbol-based bracket (USDT brackets never nest)
};

struct close_state {
    u64 conn;
    u64 ts;
    u32 sends;
    u8 quit;
    u8 tls;
};

struct connect_state {
    u64 conn;
    u64 ts;
};

BPF_HASH(traced, u32, u8, 8192);             // tgid -> 1
BPF_HASH(finalizing, u32, u32, 8192);         // tgid -> tid that entered Py_FinalizeEx
BPF_TABLE("lru_hash", u32, struct py_entry, py_last, 65536);        // tid ->
BPF_TABLE("lru_hash", u32, struct gc_state, gc_thread, 65536);      // tid ->
BPF_TABLE("lru_hash", u32, struct close_state, in_close, 65536);    // tid ->
BPF_TABLE("lru_hash", u32, struct connect_state, in_connect, 65536); // tid ->
BPF_PERCPU_ARRAY(counters, u64, 2);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline int is_traced(u32 tgid)
{
    return traced.lookup(&tgid) != NULL;
}

static __always_inline struct event *reserve(u8 kind)
{
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    u32 idx = e ? 0 : 1;
    u64 *c = counters.lookup(&idx);
    if (c)
        *c += 1;    // per-CPU slot: no atomics needed
    if (!e)
        return NULL;
    u64 id = bpf_get_current_pid_tgid();
    e->ts = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->kind = kind;
    e->conn = 0;
    e->val = 0;
    e->val2 = 0;
    e->cause = 0;
    e->gen = -1;
    e->wire = 0;
    e->pad = 0;
    e->hlen = 0;
    __builtin_memset(e->head, 0, HEAD_LEN);
    return e;
}

static __always_inline void submit(struct event *e)
{
    events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

static __always_inline u64 reg_at(struct pt_regs *ctx, int off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)ctx + off);
    return v;
}

static __always_inline s64 extend(u64 raw, int size, int is_signed)
{
    if (size == 1)
        return is_signed ? (s64)(s8)raw : (s64)(u8)raw;
    if (size == 2)
        return is_signed ? (s64)(s16)raw : (s64)(u16)raw;
    if (size == 4)
        return is_signed ? (s64)(s32)raw : (s64)(u32)raw;
    return (s64)raw;
}

/* One USDT operand, decoded in user space into KIND/REG/OFF/SIZE/SIGNED. */
static __always_inline s64 usdt_arg(struct pt_regs *ctx, int kind, int reg, s64 off, int size, int is_signed)
{
    u64 raw = 0;
    if (kind == 1) {
        raw = reg_at(ctx, reg);
    } else if (kind == 2) {
        u64 addr = reg_at(ctx, reg) + off;
        if (size == 1)
            bpf_probe_read_user(&raw, 1, (void *)addr);
        else if (size == 2)
            bpf_probe_read_user(&raw, 2, (void *)addr);
        else if (size == 4)
            bpf_probe_read_user(&raw, 4, (void *)addr);
        else
            bpf_probe_read_user(&raw, 8, (void *)addr);
    } else if (kind == 3) {
        return off;
    } else {
        return -1;
    }
    return extend(raw, size, is_signed);
}

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

/* ---- the client library ---------------------------------------------------------------- */

int on_connect(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct connect_state cs = {};
    cs.conn = PT_REGS_PARM1(ctx);
    cs.ts = bpf_ktime_get_ns();
    in_connect.update(&tid, &cs);
    return 0;
}

int on_connect_ret(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct connect_state *cs = in_connect.lookup(&tid);
    if (!cs)
        return 0;
    struct event *e = reserve(EV_CONNECT);
    if (e) {
        e->conn = cs->conn;
        e->val = PT_REGS_RC(ctx) != 0;
        e->val2 = cs->ts;
        submit(e);
    }
    in_connect.delete(&tid);
    return 0;
}

int on_close(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_traced(tgid))
        return 0;
    u32 tid = (u32)id;
    u64 mysql = PT_REGS_PARM1(ctx);
    u8 cause = CAUSE_UNKNOWN;
    s32 gen = -1;
    u64 self = 0;
    struct py_entry *pe = py_last.lookup(&tid);
    if (pe && pe->self + CONN_OFFSET == mysql) {
        self = pe->self;
        if (pe->kind == PY_CLOSE) {
            cause = CAUSE_EXPLICIT_CLOSE;
        } else {
            u32 *fin_tid = finalizing.lookup(&tgid);
            struct gc_state *gs = gc_thread.lookup(&tid);
            if (fin_tid && *fin_tid == tid) {
                cause = CAUSE_SHUTDOWN;
            } else if (gs && gs->depth > 0) {
                cause = CAUSE_GC;
                gen = gs->gen;
            } else {
                cause = CAUSE_REFCOUNT;
            }
        }
        py_last.delete(&tid);
    }
    struct close_state st = {};
    st.conn = mysql;
    st.ts = bpf_ktime_get_ns();
    in_close.update(&tid, &st);
    struct event *e = reserve(EV_CLOSE);
    if (e) {
        e->conn = mysql;
        e->cause = cause;
        e->gen = gen;
        e->val2 = self;
        submit(e);
    }
    return 0;
}

int on_close_ret(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct close_state *st = in_close.lookup(&tid);
    if (!st)
        return 0;
    struct event *e = reserve(EV_CLOSE_RET);
    if (e) {
        e->conn = st->conn;
        e->val = st->sends;
        e->val2 = st->ts;
        if (st->quit)
            e->wire = WIRE_CONFIRMED;
        else if (st->tls)
            e->wire = WIRE_ENCRYPTED;
        else if (st->sends)
            e->wire = WIRE_OTHER;
        else
            e->wire = WIRE_NOT_SENT;
        submit(e);
    }
    in_close.delete(&tid);
    return 0;
}

/* ---- CPython: GC brackets and finalisation -------------------------------------------- */

#ifdef GC_START_ARG_KIND
int on_gc_start_usdt(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct gc_state gs = {};
    gs.gen = (s32)usdt_arg(ctx, GC_START_ARG_KIND, GC_START_ARG_REG, GC_START_ARG_OFF,
                           GC_START_ARG_SIZE, GC_START_ARG_SIGNED);
    gs.depth = 1;
    gc_thread.update(&tid, &gs);
    struct event *e = reserve(EV_GC_START);
    if (e) {
        e->val = gs.gen;
        e->gen = gs.gen;
        submit(e);
    }
    return 0;
}

int on_gc_done_usdt(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct gc_state *gs = gc_thread.lookup(&tid);
    struct event *e = reserve(EV_GC_DONE);
    if (e) {
        e->val = usdt_arg(ctx, GC_DONE_ARG_KIND, GC_DONE_ARG_REG, GC_DONE_ARG_OFF,
                          GC_DONE_ARG_SIZE, GC_DONE_ARG_SIGNED);
        e->gen = gs ? gs->gen : -1;
        submit(e);
    }
    gc_thread.delete(&tid);
    return 0;
}
#endif

#ifdef GC_SYM_GEN_REG
int on_gc_start_sym(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct gc_state *cur = gc_thread.lookup(&tid);
    if (cur && cur->depth > 0) {
        cur->depth += 1;
        return 0;
    }
    struct gc_state gs = {};
#if GC_SYM_GEN_REG >= 0
    gs.gen = (s32)reg_at(ctx, GC_SYM_GEN_REG);
#else
    gs.gen = -1;    // the build's clone of the collection function hides the generation
#endif
    gs.depth = 1;
    gc_thread.update(&tid, &gs);
    struct event *e = reserve(EV_GC_START);
    if (e) {
        e->val = gs.gen;
        e->gen = gs.gen;
        submit(e);
    }
    return 0;
}

int on_gc_done_sym(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct gc_state *gs = gc_thread.lookup(&tid);
    if (!gs)
        return 0;
    if (gs->depth > 1) {
        gs->depth -= 1;
        return 0;
    }
    struct event *e = reserve(EV_GC_DONE);
    if (e) {
        e->val = PT_REGS_RC(ctx);  // Py_ssize_t: collected + uncollectable
        e->gen = gs->gen;
        submit(e);
    }
    gc_thread.delete(&tid);
    return 0;
}
#endif

int on_finalize(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_traced(tgid))
        return 0;
    u32 tid = (u32)id;
    finalizing.update(&tgid, &tid);
    struct event *e = reserve(EV_FINALIZE);
    if (e)
        submit(e);
    return 0;
}

/* ---- wire: sends made by a thread inside mysql_close ---------------------------------- */

static __always_inline int on_send(u64 fd, const void *buf, u64 len)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct close_state *st = in_close.lookup(&tid);
    if (!st)
        return 0;
    u8 head[HEAD_LEN] = {};
    u32 n = len < HEAD_LEN ? (u32)len : HEAD_LEN;
    if (n > 0 && n <= HEAD_LEN)
        bpf_probe_read_user(head, n, buf);
    st->sends += 1;
    if (len == 5 && head[0] == 1 && head[1] == 0 && head[2] == 0 && head[3] == 0 && head[4] == 1)
        st->quit = 1;
    if (n >= 2 && head[0] >= 0x14 && head[0] <= 0x17 && head[1] == 0x03)
        st->tls = 1;
    struct event *e = reserve(EV_WIRE);
    if (e) {
        e->conn = st->conn;
        e->val = len;
        e->val2 = fd;
        e->hlen = n;
        __builtin_memcpy(e->head, head, HEAD_LEN);
        submit(e);
    }
    return 0;
}

/* Tracepoint contexts are read at the offsets of the running kernel's format files. */
static __always_inline u64 tp_u64(void *args, int off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)args + off);
    return v;
}

int on_sys_write(void *args)
{
    return on_send(tp_u64(args, TP_WRITE_FD), (const void *)tp_u64(args, TP_WRITE_BUF), tp_u64(args, TP_WRITE_LEN));
}

int on_sys_sendto(void *args)
{
    return on_send(tp_u64(args, TP_SENDTO_FD), (const void *)tp_u64(args, TP_SENDTO_BUF), tp_u64(args, TP_SENDTO_LEN));
}

/* iovec-based sends: the first iovec carries the packet header. */
static __always_inline int on_send_iov(u64 fd, const void *iov)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (!in_close.lookup(&tid))
        return 0;
    u64 pair[2] = {};  // struct iovec { void *iov_base; size_t iov_len; }
    bpf_probe_read_user(pair, sizeof(pair), iov);
    return on_send(fd, (const void *)pair[0], pair[1]);
}

int on_sys_writev(void *args)
{
    return on_send_iov(tp_u64(args, TP_WRITEV_FD), (const void *)tp_u64(args, TP_WRITEV_VEC));
}

int on_sys_sendmsg(void *args)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (!in_close.lookup(&tid))
        return 0;
    u64 msg = tp_u64(args, TP_SENDMSG_MSG);
    u64 iov = 0;  // struct user_msghdr: name (8), namelen (4 + 4 pad), iov at 16
    bpf_probe_read_user(&iov, sizeof(iov), (void *)(msg + 16));
    return on_send_iov(tp_u64(args, TP_SENDMSG_FD), (const void *)iov);
}

/* ---- the traced process tree ---------------------------------------------------------- */

int on_newtask(void *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_traced(tgid))
        return 0;
    u64 flags = tp_u64(args, TP_NEWTASK_FLAGS);
    if (flags & CLONE_THREAD)
        return 0;   // a thread: its tgid is already traced
    u32 child = (u32)tp_u64(args, TP_NEWTASK_PID);
    u8 one = 1;
    traced.update(&child, &one);
    struct event *e = reserve(EV_FORK);
    if (e) {
        e->val = child;
        submit(e);
    }
    return 0;
}

int on_exit(void *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
    if (!is_traced(tgid))
        return 0;
    py_last.delete(&tid);
    gc_thread.delete(&tid);
    in_close.delete(&tid);
    in_connect.delete(&tid);
#if TP_EXIT_GROUP_DEAD >= 0
    u8 group_dead = 0;
    bpf_probe_read_kernel(&group_dead, 1, (char *)args + TP_EXIT_GROUP_DEAD);
    if (!group_dead)
        return 0;
#else
    if (tid != tgid)
        return 0;
#endif
    traced.delete(&tgid);
    finalizing.delete(&tgid);
    struct event *e = reserve(EV_EXIT);
    if (e)
        submit(e);
    return 0;
}
