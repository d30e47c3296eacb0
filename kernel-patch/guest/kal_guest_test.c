// SPDX-License-Identifier: GPL-2.0
/*
 * Project-side guest checks that need more than the kselftest assumes about
 * the machine: memory cgroup charging of images (cgroup v2 mounted by us),
 * and the uapi as the Rust sys crate mirrors it (struct sizes).
 *
 * Prints TAP-like "ok"/"not ok" lines; exit status 0 only if all pass.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/kal.h>

#ifndef __NR_kal_snapshot
#define __NR_kal_snapshot 1000
#endif
#define CG "/sys/fs/cgroup"
#define HEAP (32UL << 20)

static int failures;

static void result(int ok, const char *name)
{
	printf("%s %s\n", ok ? "ok" : "not ok", name);
	if (!ok)
		failures++;
}

static long kal1(void *p, size_t len, unsigned int flags)
{
	struct kal_range r = { (uintptr_t)p, len };

	return syscall(__NR_kal_snapshot, &r, 1, flags);
}

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, s, strlen(s));
	close(fd);
	return n == (ssize_t)strlen(s) ? 0 : -1;
}

static long read_long(const char *path)
{
	char buf[64] = "";
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? atol(buf) : -1;
}

static int setup_cgroup(void)
{
	mkdir(CG, 0755);
	if (mount("cgroup2", CG, "cgroup2", 0, NULL) && errno != EBUSY) {
		perror("mount cgroup2");
		return -1;
	}
	if (write_str(CG "/cgroup.subtree_control", "+memory")) {
		perror("enable memory controller");
		return -1;
	}
	if (mkdir(CG "/kal", 0755) && errno != EEXIST) {
		perror("mkdir cgroup");
		return -1;
	}
	return 0;
}

static void join_cgroup(void)
{
	char pid[32];

	snprintf(pid, sizeof(pid), "%d", getpid());
	if (write_str(CG "/kal/cgroup.procs", pid))
		_exit(90);
}

/* Child: memory.current while an image holds the old copy of the heap. */
static int charge_child(int report_fd)
{
	char *p = mmap(NULL, HEAP, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	long c[4];
	int fd;

	join_cgroup();
	memset(p, 1, HEAP);
	c[0] = read_long(CG "/kal/memory.current");
	fd = kal1(p, HEAP, KAL_SNAPSHOT_STOP_THREADS);
	if (fd < 0)
		return 91;
	c[1] = read_long(CG "/kal/memory.current");
	memset(p, 2, HEAP);
	c[2] = read_long(CG "/kal/memory.current");
	close(fd);
	usleep(200000);
	c[3] = read_long(CG "/kal/memory.current");
	if (write(report_fd, c, sizeof(c)) != sizeof(c))
		return 92;
	return 0;
}

static void test_charge(void)
{
	int pipefd[2], status;
	long c[4] = { 0 };
	pid_t pid;

	if (pipe(pipefd))
		return result(0, "memcg_charge (pipe)");
	pid = fork();
	if (pid == 0)
		_exit(charge_child(pipefd[1]));
	waitpid(pid, &status, 0);
	if (read(pipefd[0], c, sizeof(c)) != sizeof(c))
		printf("# child status %#x\n", status);
	close(pipefd[0]);
	close(pipefd[1]);
	printf("# memory.current kB: heap %ld, +image %ld, +rewrite %ld, closed %ld\n",
	       c[0] >> 10, c[1] >> 10, c[2] >> 10, c[3] >> 10);
	/* The rewrite doubles the charge: the image's pages stay charged. */
	result(c[0] > 0 && c[2] - c[0] > (long)(HEAP - (2 << 20)) &&
	       c[2] - c[3] > (long)(HEAP - (2 << 20)), "memcg_charge");
}

/*
 * Child: with memory.max just above the heap, an image plus a full rewrite
 * does not fit and the cgroup OOM-kills the child; without an image the
 * same rewrite fits.
 */
static int limit_child(int with_image, int sync_fd, int go_fd)
{
	char *p = mmap(NULL, HEAP, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char c = 0;
	int fd = -1;

	join_cgroup();
	memset(p, 1, HEAP);
	if (write(sync_fd, "r", 1) != 1 || read(go_fd, &c, 1) != 1)
		return 93;
	if (with_image) {
		fd = kal1(p, HEAP, 0);
		if (fd < 0)
			return 94;
	}
	memset(p, 2, HEAP);
	if (fd >= 0)
		close(fd);
	return 0;
}

static void test_limit(int with_image)
{
	int up[2], down[2], status;
	char c, buf[32];
	long cur;
	pid_t pid;

	if (pipe(up) || pipe(down))
		return result(0, "memcg_limit (pipe)");
	write_str(CG "/kal/memory.max", "max");
	pid = fork();
	if (pid == 0)
		_exit(limit_child(with_image, up[1], down[0]));
	if (read(up[0], &c, 1) != 1) {
		waitpid(pid, &status, 0);
		return result(0, "memcg_limit (child)");
	}
	cur = read_long(CG "/kal/memory.current");
	snprintf(buf, sizeof(buf), "%ld", cur + (8L << 20));
	write_str(CG "/kal/memory.max", buf);
	if (write(down[1], "g", 1) != 1)
		return result(0, "memcg_limit (go)");
	waitpid(pid, &status, 0);
	write_str(CG "/kal/memory.max", "max");
	printf("# with_image=%d memory.max=%s: child %s %d\n", with_image, buf,
	       WIFSIGNALED(status) ? "killed by signal" : "exited",
	       WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
	if (with_image)
		result(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
		       "memcg_limit_image_counts");
	else
		result(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		       "memcg_limit_control");
	close(up[0]);
	close(up[1]);
	close(down[0]);
	close(down[1]);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	result(sizeof(struct kal_range) == 16 && sizeof(struct kal_meta) == 48 &&
	       sizeof(struct kal_thread) == 168, "uapi_sizes_match_rust");
	if (setup_cgroup()) {
		result(0, "memcg_setup");
	} else {
		test_charge();
		test_limit(0);
		test_limit(1);
	}
	printf("# kal_guest_test: %d failure(s)\n", failures);
	return failures ? 1 : 0;
}
