/* hwm PROGRAM ARGS...: run PROGRAM (stdout to /dev/null) under ptrace and,
 * when its main thread reaches exit (PTRACE_EVENT_EXIT: after atexit
 * handlers and destructors, before the address space is torn down), print
 * its VmHWM in KiB from /proc/PID/status.
 *
 * Why not wait4's ru_maxrss, which `make bench` reports: on kernels with
 * per-CPU RSS counters (6.2 and later) the kernel folds each CPU's count
 * into the total only every 32 pages, and ru_maxrss is taken from the
 * folded total, so it reads up to 128 KiB per CPU low, by an amount that
 * changes from run to run.  /proc/PID/status sums the per-CPU counts (on
 * this machine's 6.18 kernel): the same program, touching the same pages,
 * gave ru_maxrss 2004-2140 KiB and VmHWM 2068-2160 KiB in six runs. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: hwm PROGRAM ARGS...\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("hwm: fork");
        return 2;
    }
    if (pid == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0)
            dup2(fd, 1);
        execvp(argv[1], argv + 1);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFSTOPPED(st)) {
        fprintf(stderr, "hwm: %s did not start\n", argv[1]);
        return 2;
    }
    ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_TRACEEXIT | PTRACE_O_EXITKILL);
    ptrace(PTRACE_CONT, pid, 0, 0);
    long hwm = -1;
    for (;;) {
        pid_t w = waitpid(-1, &st, __WALL);
        if (w < 0)
            break;
        if (WIFEXITED(st) || WIFSIGNALED(st)) {
            if (w == pid)
                break;
            continue;
        }
        int sig = 0;
        if (st >> 8 == (SIGTRAP | (PTRACE_EVENT_EXIT << 8))) {
            if (w == pid) {
                char path[64], line[256];
                snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
                FILE *f = fopen(path, "r");
                while (f && fgets(line, sizeof line, f))
                    if (strncmp(line, "VmHWM:", 6) == 0)
                        hwm = atol(line + 6);
                if (f)
                    fclose(f);
            }
        } else if (WSTOPSIG(st) != SIGTRAP) {
            sig = WSTOPSIG(st);
        }
        ptrace(PTRACE_CONT, w, 0, sig);
    }
    if (hwm < 0) {
        fprintf(stderr, "hwm: no exit event seen\n");
        return 1;
    }
    printf("%ld\n", hwm);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
