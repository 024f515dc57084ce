/*
 * burst: mysql_close events as fast as the probes allow, for tests/bench/throughput.py.
 *
 *   burst [-n ITERATIONS] [-t SECONDS] [-r CLOSES_PER_SECOND]
 *
 * A tight loop of mysql_init(&m); mysql_close(&m) on handles that never connect: each
 * iteration is one hit of the mysql_close uprobe (and its uretprobe), no server needed.
 * Stops after ITERATIONS or SECONDS, whichever comes first; with -r it paces itself to
 * that rate (checked every 256 iterations), else it runs flat out. Prints one JSON line:
 * the count, the time, the rate, CLOCK_MONOTONIC at main() entry (start-up measurement)
 * and its own CPU time (the probes' cost is charged to this process).
 *
 * Build: gcc -O2 -o burst burst.c $(pkg-config --cflags --libs libmariadb)
 *        (or mysqlclient's flags; any library exporting mysql_init/mysql_close).
 */
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    long long start_ns = mono_ns();  /* first thing: when the traced program got to run */
    long long iterations = -1;
    double seconds = -1, rate = 0;
    int opt;
    while ((opt = getopt(argc, argv, "n:t:r:")) != -1) {
        switch (opt) {
        case 'n': iterations = atoll(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'r': rate = atof(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-n ITERATIONS] [-t SECONDS] [-r CLOSES_PER_SECOND]\n", argv[0]);
            return 2;
        }
    }
    if (iterations < 0 && seconds < 0)
        iterations = 1000000;
    long long deadline = seconds >= 0 ? mono_ns() + (long long)(seconds * 1e9) : -1;
    MYSQL m;
    long long i = 0;
    long long t0 = mono_ns(), now = t0;
    while (iterations < 0 || i < iterations) {
        mysql_init(&m);
        mysql_close(&m);
        i++;
        if ((i & 255) == 0) {
            now = mono_ns();
            if (deadline >= 0 && now >= deadline)
                break;
            if (rate > 0) {
                long long due = t0 + (long long)(i / rate * 1e9);
                if (due > now) {
                    struct timespec d = {(due - now) / 1000000000LL, (due - now) % 1000000000LL};
                    nanosleep(&d, NULL);
                }
            }
        }
    }
    now = mono_ns();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double dt = (now - t0) / 1e9;
    printf("{\"closes\": %lld, \"seconds\": %.6f, \"rate\": %.1f, \"start_ns\": %lld, "
           "\"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f}\n",
           i, dt, dt > 0 ? i / dt : 0.0, start_ns,
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    return 0;
}
