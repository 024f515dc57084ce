/* One unrelated process's system calls: ns per getppid() and per 1-byte read of /dev/zero.
 * Used by tests/bench/syscall_cost.py (traced machine vs not). Build: cc -O2 -o X syscall_loop.c */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);   /* CPU time: steadier than wall time on a shared machine */
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    int fd = open("/dev/zero", O_RDONLY);
    char c;
    double t0 = now();
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid);
    double t1 = now();
    for (long i = 0; i < n; i++)
        if (read(fd, &c, 1) != 1)
            return 1;
    double t2 = now();
    printf("%.1f %.1f\n", (t1 - t0) / n, (t2 - t1) / n);
    return 0;
}
