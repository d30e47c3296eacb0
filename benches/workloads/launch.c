/* launch RESULT_FILE PROGRAM ARGS...: run PROGRAM as a fresh process and
 * write its measurements to RESULT_FILE as one line:
 *     wall_ns maxrss_kib user_us sys_us wait_status
 *
 * Why a launcher: Linux carries the parent's peak RSS over into a forked
 * child (the high-water mark is copied at fork and folded in again at exec), so
 * a child forked straight from the benchmark runner would report at least the
 * runner's own RSS.  This program is tiny (linked statically when possible), so
 * what it passes on is a small constant, the same for every allocator.
 * BENCH_PRELOAD, if set, becomes LD_PRELOAD for PROGRAM only. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: launch RESULT_FILE PROGRAM ARGS...\n");
        return 2;
    }
    const char *preload = getenv("BENCH_PRELOAD");
    if (preload && *preload)
        setenv("LD_PRELOAD", preload, 1);
    unsetenv("BENCH_PRELOAD");

    struct timespec t0, t1;
    struct rusage ru;
    int status = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("launch: fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror("launch: exec");
        _exit(127);
    }
    while (wait4(pid, &status, 0, &ru) < 0)
        ;
    clock_gettime(CLOCK_MONOTONIC, &t1);

    long long wall_ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    FILE *f = fopen(argv[1], "w");
    if (!f) {
        perror("launch: result file");
        return 2;
    }
    fprintf(f, "%lld %ld %lld %lld %d\n", wall_ns, ru.ru_maxrss,
            (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec,
            (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec, status);
    return fclose(f) == 0 ? 0 : 2;
}
