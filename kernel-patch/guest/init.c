// SPDX-License-Identifier: GPL-2.0
/*
 * PID 1 of the kal_snapshot test guest.  Mounts what the tests need, runs
 * the programs named by kal.mode= on the kernel command line, prints one
 * "KAL-RESULT: PASS" or "KAL-RESULT: FAIL ..." line for the host to turn
 * into an exit code, and powers the machine off.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Run @argv with a timeout; returns its exit status or -1. */
static int run(char *const argv[], int timeout_s)
{
	double t0 = now();
	int status;
	pid_t pid;

	printf("kal-init: running %s\n", argv[0]);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		execv(argv[0], argv);
		perror("execv");
		_exit(127);
	}
	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			break;
		if (now() - t0 > timeout_s) {
			printf("kal-init: %s timed out after %d s\n", argv[0], timeout_s);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return -1;
		}
		usleep(20000);
	}
	printf("kal-init: %s finished in %.1f s: %s %d\n", argv[0], now() - t0,
	       WIFEXITED(status) ? "exit" : "signal",
	       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY);

	if (fd >= 0) {
		if (write(fd, s, strlen(s)) < 0)
			perror(path);
		close(fd);
	}
}

int main(void)
{
	char cmdline[1024] = "";
	int fd, failed = 0;

	mkdir("/proc", 0755);
	mkdir("/sys", 0755);
	mkdir("/dev", 0755);
	mkdir("/tmp", 01777);
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	mount("tmpfs", "/tmp", "tmpfs", 0, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);

	fd = open("/proc/cmdline", O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);

		cmdline[n > 0 ? n : 0] = 0;
		close(fd);
	}
	write_file("/sys/kernel/mm/transparent_hugepage/enabled", "madvise");
	write_file("/sys/kernel/mm/transparent_hugepage/defrag", "madvise");

	if (strstr(cmdline, "kal.mode=bench")) {
		char *argv[] = { "/kal_bench", NULL };

		failed |= run(argv, 3000) != 0;
	} else {
		char *kself[] = { "/kal_snapshot_test", NULL };
		char *extra[] = { "/kal_guest_test", NULL };

		char *rust[] = { "/rmalloc_sys_test", "--test-threads=1", NULL };

		failed |= run(kself, 900) != 0;
		failed |= run(extra, 600) != 0;
		if (access(rust[0], X_OK) == 0)
			failed |= run(rust, 300) != 0;
		else
			printf("kal-init: WARNING: %s missing, Rust sys tests not run\n", rust[0]);
	}
	printf("KAL-RESULT: %s\n", failed ? "FAIL" : "PASS");
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	reboot(RB_AUTOBOOT);
	return 0;
}
