/* ---- common: parameters, per-thread state, maps, config, output, registers ---------------
 * Compile-time parameters (-D flags, tracer/bpf/compile.py) depend only on the machine:
 *   RINGBUF_PAGES          ring buffer size in pages (power of two).
 *   TP_*                   field offsets of the tracepoints used, read from tracefs format
 *                          files at load time (sched_process_exit changed across kernels).
 *   OWN_PT_REGS            declare struct pt_regs here instead of including kernel headers.
 * What depends on the traced program is in the `config` array (CFG_*), chosen per run by
 * tracer/bpf/resolve.py and written by session.py before attaching:
 *   CONN_OFFSET            object.__basicsize__ of the traced interpreter: the MYSQL* that
 *                          mysql_close receives is self + CONN_OFFSET (mysqlclient's
 *                          _mysql_ConnectionObject starts with PyObject_HEAD, then MYSQL).
 *   GC_START_ARG_*,        how to read USDT python:gc__start's generation and gc__done's
 *   GC_DONE_ARG_*          collected count: KIND 1 register, 2 memory at reg+OFF, 3 constant;
 *                          REG is a byte offset into struct pt_regs.
 *   GC_SYM_GEN_REG         pt_regs offset of the generation argument of the collection
 *                          function (gc_collect_main & co) when there is no USDT; -1 when
 *                          unknown (3.8's GCC clones collect.constprop.N).
 *   LAST_ERRNO_OFF         offsetof(MYSQL, net.last_errno), decoded from the client library's
 *                          own mysql_errno (resolve.last_errno_offset); -1 when unknown.
 *   AFTER_ATEXIT           1: shutdown starts at on_after_atexit (resolve.AFTER_ATEXIT).
 *
 * Output: one ring buffer, submitted with BPF_RB_NO_WAKEUP (user space drains it every
 * ~20 ms; waking the reader per event cost ~7x more when measured, tests/bench/throughput.py). Every reserve is counted
 * in `counters`: [0] emitted, [1] dropped (reserve failed: buffer full).
 */

/* Compile time is most of the tracer's start-up, and most of it is kernel headers: with
 * OWN_PT_REGS the x86-64 user ABI layout of struct pt_regs (uapi/asm/ptrace.h, the same
 * offsets resolve.PT_REGS uses) is declared here instead of including it (~0.8 s instead of
 * ~1.3 s here). compile.py falls back to the headers if that does not compile. */
#if OWN_PT_REGS
struct pt_regs {
    unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};
#else
#include <uapi/linux/ptrace.h>
#endif
#define CLONE_THREAD 0x00010000     /* include/uapi/linux/sched.h */

struct py_entry {
    u64 self;       // the _mysql.connection object
    u64 ts;
    u32 kind;       // PY_CLOSE / PY_DEALLOC
};

struct gc_state {
    s32 gen;
    u32 depth;      // nesting of the symbol-based bracket (USDT brackets never nest)
    u64 sp;         // symbol bracket: the stack pointer at the outermost entry (its frame)
};

struct close_state {
    u64 conn;
    u64 ts;
    u32 sends;
    s32 err;        // errno of the first failed send
    u8 quit;
    u8 tls;
    u8 in_send;     // a send syscall is in flight (its exit reports the result)
    u8 cur_quit;    // ... and it is the COM_QUIT
    u8 tcp_old;     // the TCP transition the client's close() made (first one only)
    u8 tcp_new;
    u8 fin_first;   // 1: that socket's peer FIN had come in before mysql_close was entered
    u32 p_fd;       // the send in flight: fd, length, first bytes (emitted at its exit)
    u32 p_hlen;
    u64 p_len;
    u8 p_head[HEAD_LEN];
};

struct connect_state {
    u64 conn;
    u64 ts;
    s32 fd;         // the last connect()ed fd inside mysql_real_connect, -1 none
};

struct sock_key {
    u32 tgid;
    u32 fd;
};

struct conn_key {
    u64 conn;
    u32 tgid;
    u32 pad;
};

struct io_state {   // a read or write on a MySQL socket that saw the server's end
    u64 conn;
    u32 fd;
    u8 op;          // OP_READ / OP_WRITE
};

struct conn_sock {
    u32 fd;
    u32 ended;      // EV_PEER_END was emitted: the close reports it (CLOSE_PEER_ENDED)
};


/* One bit per tgid up to PID_MAX_LIMIT (4194304 on 64-bit): 512 KiB. An array lookup is
 * inlined by the verifier (~10 ns against ~50 ns for a hash), and is_traced runs on every
 * read/write/send system call of every process while we are attached. */
#define TRACED_WORDS 65536
BPF_ARRAY(traced, u64, TRACED_WORDS);
struct fin_state {
    u32 tid;        // the thread that entered Py_FinalizeEx
    u32 finalizing; // 1: its last atexit handler has run (shutdown has begun)
};

BPF_HASH(finalizing, u32, struct fin_state, 8192);   // tgid ->
BPF_TABLE("lru_hash", u32, struct py_entry, py_last, 65536);        // tid ->
BPF_TABLE("lru_hash", u32, struct gc_state, gc_thread, 65536);      // tid ->
BPF_TABLE("lru_hash", u32, struct close_state, in_close, 65536);    // tid ->
BPF_TABLE("lru_hash", u32, struct connect_state, in_connect, 65536); // tid ->
BPF_TABLE("lru_hash", struct sock_key, u64, socks, 65536);          // (tgid, fd) -> MYSQL* of a live connection
BPF_TABLE("lru_hash", struct conn_key, struct conn_sock, conn_fds, 65536);  // (MYSQL*, tgid) -> its socket
BPF_TABLE("lru_hash", u64, u64, fin_in, 16384);                     // TCP sock -> when the peer's FIN came in (CLOSE_WAIT)
BPF_PERCPU_ARRAY(counters, u64, 2);

/* What depends on the traced program is read at run time from `config` (written by
 * session.py before any probe is attached, compile.CONFIG names the slots), not compiled
 * in: the program's text then depends only on these files and the kernel, so it compiles
 * while the command is still being resolved (compile.start_compile, start-up). */
#define CFG_CONN_OFFSET 0
#define CFG_LAST_ERRNO_OFF 1
#define CFG_AFTER_ATEXIT 2
#define CFG_GC_SYM_GEN_REG 3
#define CFG_GC_START_ARG 4      /* KIND, REG, OFF, SIZE, SIGNED */
#define CFG_GC_DONE_ARG 9       /* KIND, REG, OFF, SIZE, SIGNED */
#define CFG_SLOTS 14
BPF_ARRAY(config, s64, CFG_SLOTS);

static __always_inline s64 cfg(u32 slot)
{
    s64 *v = config.lookup(&slot);
    return v ? *v : -1;
}
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline int is_traced(u32 tgid)
{
    u32 idx = tgid >> 6;
    u64 *w = traced.lookup(&idx);
    return w && ((*w >> (tgid & 63)) & 1);
}

static __always_inline void set_traced(u32 tgid, int on)
{
    u32 idx = tgid >> 6;
    u64 *w = traced.lookup(&idx);
    if (!w)
        return;
    u64 bit = 1ULL << (tgid & 63);
    if (on)
        __sync_fetch_and_or(w, bit);    // forks on other CPUs may touch the same word
    else
        __sync_fetch_and_and(w, ~bit);
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
    __builtin_memset(e, 0, sizeof(*e));
    e->ts = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->kind = kind;
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

/* A register chosen at run time (config): the verifier allows only constant offsets into the
 * context, so one case per slot of struct pt_regs (21 on x86-64). */
#define REG_CASE(n) case (n) * 8: return reg_at(ctx, (n) * 8);
static __always_inline u64 reg_var(struct pt_regs *ctx, s64 off)
{
    switch (off) {
    REG_CASE(0) REG_CASE(1) REG_CASE(2) REG_CASE(3) REG_CASE(4) REG_CASE(5) REG_CASE(6)
    REG_CASE(7) REG_CASE(8) REG_CASE(9) REG_CASE(10) REG_CASE(11) REG_CASE(12) REG_CASE(13)
    REG_CASE(14) REG_CASE(15) REG_CASE(16) REG_CASE(17) REG_CASE(18) REG_CASE(19) REG_CASE(20)
    }
    return 0;
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
        raw = reg_var(ctx, reg);
    } else if (kind == 2) {
        u64 addr = reg_var(ctx, reg) + off;
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

/* Tracepoint contexts are read at the offsets of the running kernel's format files. */
static __always_inline u64 tp_u64(void *args, int off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)args + off);
    return v;
}

/* A system call's arguments, from the user registers saved at its entry (x86-64 syscall
 * ABI: di, si, dx, r10, r8, r9); still there at its exit, which only sets ax. */
static __always_inline u64 sys_arg(void *regs, int off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)regs + off);
    return v;
}
#define ARG0(r) sys_arg(r, 112)   /* di */
#define ARG1(r) sys_arg(r, 104)   /* si */
#define ARG2(r) sys_arg(r, 96)    /* dx */
