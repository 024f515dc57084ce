/* ---- system calls: two raw tracepoints for all of them ---------------------------------
 * raw_syscalls:sys_enter/sys_exit through BPF_RAW_TRACEPOINT_OPEN: the program runs for
 * every system call of every process, but costs ~30 ns where it returns at once, whereas a
 * per-syscall trace event (syscalls:sys_enter_write, ...) builds a perf record before the
 * program runs (~300 ns per hooked call, measured here) and each one is another probe to
 * tear down (~65 ms each). Arguments are read from the user registers saved at entry
 * (sys_arg, common.h). */
#define NR_READ 0
#define NR_WRITE 1
#define NR_CLOSE 3
#define NR_WRITEV 20
#define NR_CONNECT 42
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46

int on_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
    long nr = (long)ctx->args[1];
    if (nr != NR_WRITE && nr != NR_SENDTO && nr != NR_READ && nr != NR_RECVFROM && nr != NR_CLOSE &&
        nr != NR_CONNECT && nr != NR_WRITEV && nr != NR_SENDMSG)
        return 0;
    if (!is_traced(bpf_get_current_pid_tgid() >> 32))
        return 0;   // the common case: one lookup for another process's call
    void *regs = (void *)ctx->args[0];
    if (nr == NR_WRITE || nr == NR_SENDTO) {
        u64 fd = ARG0(regs), len = ARG2(regs);
        msock_send(fd, (const void *)ARG1(regs), len);   // msock (PyMySQL)
        return on_send(fd, (const void *)ARG1(regs), len);
    }
    if (nr == NR_READ || nr == NR_RECVFROM) {
        msock_read_enter(ARG0(regs), ARG1(regs));        // msock (PyMySQL)
        return 0;
    }
    if (nr == NR_CLOSE) {
        msock_close(ARG0(regs));                          // msock (PyMySQL)
        return sys_close(ARG0(regs));
    }
    if (nr == NR_CONNECT) {
        msock_connect(ARG0(regs));                        // msock (PyMySQL)
        return sys_connect(ARG0(regs));
    }
    if (nr == NR_WRITEV)
        return on_send_iov(ARG0(regs), (const void *)ARG1(regs));
    if (nr == NR_SENDMSG)
        return sys_sendmsg(ARG0(regs), ARG1(regs));
    return 0;
}

int on_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
    if (!is_traced(bpf_get_current_pid_tgid() >> 32))
        return 0;   // the common case: one array lookup for another process's call
    long nr = (long)sys_arg((void *)ctx->args[0], 120);   /* orig_ax: the call's number */
    if (nr != NR_READ && nr != NR_WRITE && nr != NR_SENDTO && nr != NR_RECVFROM && nr != NR_WRITEV && nr != NR_SENDMSG)
        return 0;
    if (nr == NR_READ || nr == NR_RECVFROM)
        msock_read_exit((s64)ctx->args[1]);               // msock (PyMySQL)
    return io_exit((s64)ctx->args[1], (void *)ctx->args[0], (nr == NR_READ || nr == NR_RECVFROM) ? OP_READ : OP_WRITE);
}
