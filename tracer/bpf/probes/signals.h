/* ---- stop signals sent to the traced processes ------------------------------------------
 * The last SIGHUP/SIGINT/SIGTERM generated for each traced process, with its sender: a kill
 * of the process group reaches the program itself, and the tracer (record.py) then does not
 * forward its own copy (session.signal_reached). */
struct sig_seen {
    u64 ts;
    u32 sig;
    u32 sender;     // tgid of the process that sent it
};
BPF_HASH(sigs_seen, u32, struct sig_seen, 1024);

int on_signal_generate(void *args)
{
    s32 sig = 0, target = 0;
    bpf_probe_read_kernel(&sig, sizeof(sig), (char *)args + TP_SIGGEN_SIG);
    if (sig != 1 && sig != 2 && sig != 15)
        return 0;
    bpf_probe_read_kernel(&target, sizeof(target), (char *)args + TP_SIGGEN_PID);
    if (target <= 0 || !is_traced((u32)target))
        return 0;
    struct sig_seen seen = {};
    seen.ts = bpf_ktime_get_ns();
    seen.sig = (u32)sig;
    seen.sender = bpf_get_current_pid_tgid() >> 32;
    u32 key = (u32)target;
    sigs_seen.update(&key, &seen);
    return 0;
}
