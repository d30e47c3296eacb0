// SPDX-License-Identifier: GPL-2.0
/*
 * Project-side guest checks that need more than the kselftest assumes about
 * the machine: memory cgroup charging of images (cgroup v2 mounted by us),
 * the uapi as the Rust sys crate mirrors it (struct sizes), and stress:
 * snapshots with STOP_THREADS while threads are created and exit and while
 * the address space is remapped.
 *
 * Prints TAP-like "ok"/"not ok" lines; exit status 0 only if all pass.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
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
	/*
	 * No swap for the group (the debug kernel has swap, which the
	 * kselftest turns on): over the limit it must be killed, not swap.
	 */
	if (access(CG "/kal/memory.swap.max", F_OK) == 0 &&
	    write_str(CG "/kal/memory.swap.max", "0"))
		return result(0, "memcg_limit (memory.swap.max)");
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

/* Stress: thread churn and mmap churn while STOP_THREADS snapshots run. */
static volatile int churn_stop;
static unsigned long churn_words[4][512];

static void *short_lived(void *arg)
{
	unsigned long *w = arg;

	for (int i = 0; i < 512; i++)
		w[i]++;
	return NULL;
}

static void *thread_churn(void *arg)
{
	unsigned long *w = arg;

	while (!churn_stop) {
		pthread_t t;

		if (pthread_create(&t, NULL, short_lived, w) == 0)
			pthread_join(t, NULL);
	}
	return NULL;
}

static void *map_churn(void *arg)
{
	while (!churn_stop) {
		char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p != MAP_FAILED) {
			memset(p, 1, 1 << 20);
			mprotect(p, 4096, PROT_READ);
			munmap(p, 1 << 20);
		}
	}
	return NULL;
}

static void test_churn(void)
{
	char *heap = mmap(NULL, 8 << 20, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int i, ok = 0, other = 0;
	pthread_t t[3];

	memset(heap, 7, 8 << 20);
	churn_stop = 0;
	pthread_create(&t[0], NULL, thread_churn, churn_words[0]);
	pthread_create(&t[1], NULL, thread_churn, churn_words[1]);
	pthread_create(&t[2], NULL, map_churn, NULL);
	for (i = 0; i < 300; i++) {
		int fd = kal1(heap, 8 << 20, KAL_SNAPSHOT_STOP_THREADS);
		struct kal_meta m;

		if (fd >= 0) {
			if (pread(fd, &m, sizeof(m), KAL_META_OFFSET) == sizeof(m) &&
			    m.magic == KAL_META_MAGIC && m.nr_threads >= 1)
				ok++;
			else
				other++;
			close(fd);
		} else {
			printf("# churn: kal_snapshot: %s\n", strerror(errno));
			other++;
		}
	}
	churn_stop = 1;
	for (i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	munmap(heap, 8 << 20);
	printf("# churn: %d snapshots, %d failed or invalid\n", ok, other);
	/* Thread creation during a stop is held off, never retried. */
	result(other == 0 && ok == 300, "stop_threads_under_thread_and_mmap_churn");
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	result(sizeof(struct kal_range) == 16 && sizeof(struct kal_meta) == 48 &&
	       sizeof(struct kal_thread) == 168, "uapi_sizes_match_rust");
	test_churn();
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
