// SPDX-License-Identifier: GPL-2.0
/*
 * PID 1 of the kal_snapshot test guest.  Mounts what the tests need, runs
 * the programs named by kal.mode= on the kernel command line, prints one
 * "KAL-RESULT: PASS" or "KAL-RESULT: FAIL ..." line for the host to turn
 * into an exit code, and powers the machine off.
 *
 * In test mode it also runs KAL's own tests (tests/kal.rs) when the host
 * put them in the initramfs: /kal_tests.conf, written by run-guest.sh, has
 * one directive per line:
 *   exe PATH        the test executable (dynamically linked; its libraries
 *                   are in the initramfs at their host paths)
 *   arg WORD        one argument (repeatable)
 *   env NAME=VALUE  one environment variable (repeatable)
 *   timeout SEC     kill it after SEC seconds (default 1200)
 */
#define _GNU_SOURCE
#include <ctype.h>
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

extern char **environ;

/* Run @argv with @envp (NULL: ours) and a timeout; returns its exit status or -1. */
static int run_env(char *const argv[], char *const envp[], int timeout_s)
{
	double t0 = now();
	int status;
	pid_t pid;

	printf("kal-init: running %s\n", argv[0]);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		execve(argv[0], argv, envp ? envp : environ);
		perror("execve");
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

static int run(char *const argv[], int timeout_s)
{
	return run_env(argv, NULL, timeout_s);
}

#define KAL_TESTS_CONF "/kal_tests.conf"
#define MAX_WORDS 64

/*
 * Run the tests described by KAL_TESTS_CONF (see the top of this file).
 * Returns 0 when they pass or are not there (said loudly), else nonzero.
 */
static int run_kal_tests(void)
{
	static char line[4096];
	char *argv[MAX_WORDS + 1], *envp[MAX_WORDS + 1];
	int argc = 1, envc = 0, timeout_s = 1200, rc;
	char *exe = NULL;
	FILE *f = fopen(KAL_TESTS_CONF, "r");

	if (!f) {
		printf("kal-init: WARNING: %s missing, KAL tests (tests/kal.rs) not run\n",
		       KAL_TESTS_CONF);
		return 0;
	}
	for (char **e = environ; *e && envc < MAX_WORDS / 2; e++)
		envp[envc++] = *e;
	while (fgets(line, sizeof(line), f)) {
		char *val, *end = line + strlen(line);

		while (end > line && isspace((unsigned char)end[-1]))
			*--end = 0;
		if (!line[0] || line[0] == '#')
			continue;
		val = strchr(line, ' ');
		if (!val) {
			printf("kal-init: %s: bad line '%s'\n", KAL_TESTS_CONF, line);
			fclose(f);
			return 1;
		}
		*val++ = 0;
		if (!strcmp(line, "exe")) {
			exe = strdup(val);
		} else if (!strcmp(line, "arg") && argc < MAX_WORDS) {
			argv[argc++] = strdup(val);
		} else if (!strcmp(line, "env") && envc < MAX_WORDS && strchr(val, '=')) {
			envp[envc++] = strdup(val);
		} else if (!strcmp(line, "timeout")) {
			timeout_s = atoi(val);
		} else {
			printf("kal-init: %s: bad or too many '%s' lines\n", KAL_TESTS_CONF, line);
			fclose(f);
			return 1;
		}
	}
	fclose(f);
	if (!exe || access(exe, X_OK) != 0) {
		printf("kal-init: %s: test executable '%s' missing\n", KAL_TESTS_CONF,
		       exe ? exe : "(no exe line)");
		return 1;
	}
	argv[0] = exe;
	argv[argc] = NULL;
	envp[envc] = NULL;
	for (int i = envc - 1; i >= 0; i--)
		if (!strncmp(envp[i], "KAL_TEST", 8))
			printf("kal-init: KAL tests with %s\n", envp[i]);
	rc = run_env(argv, envp, timeout_s);
	printf("KAL-TESTS: %s\n", rc == 0 ? "PASS" : "FAIL");
	return rc != 0;
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

#define KAL_HEAP_CONF "/kal_heap.conf"

/*
 * Bench mode: KAL's pause and scan rate per snapshot backend, with
 * benches/kal/kal_heap.c under librmalloc.so.  KAL_HEAP_CONF holds
 * "exe PATH", "lib PATH", then one "BACKEND HEAP_MIB SCANS" line per run;
 * each run prints its own "result ..." line for the host's table.
 */
static int run_kal_heap(void)
{
	static char line[512], exe[256], lib[256], preload[300], opts[200];
	char backend[16], mib[16], scans[16];
	int failed = 0, envc = 0;
	char *envp[MAX_WORDS + 3];
	FILE *f = fopen(KAL_HEAP_CONF, "r");

	if (!f)
		return 0;
	for (char **e = environ; *e && envc < MAX_WORDS; e++)
		envp[envc++] = *e;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "exe %255s", exe) == 1 || sscanf(line, "lib %255s", lib) == 1)
			continue;
		if (sscanf(line, "%15s %15s %15s", backend, mib, scans) != 3)
			continue;
		char *argv[] = { exe, mib, scans, NULL };

		snprintf(preload, sizeof(preload), "LD_PRELOAD=%s", lib);
		snprintf(opts, sizeof(opts),
			 "KAL_OPTIONS=mode=detect:interval_ms=86400000:scan_timeout_ms=600000:backend=%s",
			 backend);
		envp[envc] = preload;
		envp[envc + 1] = opts;
		envp[envc + 2] = NULL;
		printf("kal-init: kal_heap backend=%s heap=%s MiB scans=%s\n", backend, mib, scans);
		failed |= run_env(argv, envp, 2400) != 0;
	}
	fclose(f);
	return failed;
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
	/*
	 * No tmpfs over /tmp: the initramfs root is already writable memory,
	 * and the host packs its test executables at their own paths, which
	 * may lie under /tmp when the checkout does.
	 */
	/* KAL's statistics page lives in /dev/shm. */
	mkdir("/dev/shm", 01777);
	mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777");
	setvbuf(stdout, NULL, _IOLBF, 0);
	setenv("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", 1);
	setenv("HOME", "/tmp", 1);
	setenv("TMPDIR", "/tmp", 1);
	setenv("LC_ALL", "C", 1);

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
		failed |= run_kal_heap();
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
		failed |= run_kal_tests();
	}
	printf("KAL-RESULT: %s\n", failed ? "FAIL" : "PASS");
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	reboot(RB_AUTOBOOT);
	return 0;
}
