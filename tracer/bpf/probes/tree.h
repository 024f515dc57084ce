/* ---- the traced process tree ----------------------------------------------------------
 * `traced` is a bitmap of tgids, seeded by user space with the corked root pid,
 * extended at task_newtask for non-thread clones of a traced process, pruned at exit.
 */

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
    set_traced(child, 1);
    struct event *e = reserve(EV_FORK);
    if (e) {
        e->fork.child = child;
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
    msock_reading.delete(&tid);
#if TP_EXIT_GROUP_DEAD >= 0
    u8 group_dead = 0;
    bpf_probe_read_kernel(&group_dead, 1, (char *)args + TP_EXIT_GROUP_DEAD);
    if (!group_dead)
        return 0;
#else
    if (tid != tgid)
        return 0;
#endif
    set_traced(tgid, 0);
    finalizing.delete(&tgid);
    struct event *e = reserve(EV_EXIT);
    if (e)
        submit(e);
    return 0;
}
