// SPDX-License-Identifier: GPL-2.0
/*
 * Pause of kal_snapshot() against fork() of the same process, in the same
 * guest: heaps of 64 MiB, 256 MiB and 1 GiB, of 4 KiB pages and of
 * transparent huge pages.  The pause is the time the calling thread spends
 * in the system call (for fork(), in the parent); with
 * KAL_SNAPSHOT_STOP_THREADS that is also how long the other threads are
 * held.  Prints a Markdown table.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/kal.h>

#ifndef __NR_kal_snapshot
#define __NR_kal_snapshot 1000
#endif
#define HPAGE (2UL << 20)

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
	int i = (int)(p * n + 0.999999) - 1;

	qsort(v, n, sizeof(*v), cmp);
	return v[i < 0 ? 0 : (i >= n ? n - 1 : i)];
}

static long meminfo_kb(const char *key)
{
	char line[256];
	long v = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)) && line[strlen(key)] == ':')
			v = atol(line + strlen(key) + 1);
	fclose(f);
	return v;
}

static void fmt(char *buf, double us)
{
	if (us >= 1000)
		sprintf(buf, "%.2f ms", us / 1000);
	else
		sprintf(buf, "%.0f µs", us);
}

static volatile int spin_stop;

static void *spinner(void *arg)
{
	volatile unsigned long *w = arg;

	while (!spin_stop)
		(*w)++;
	return NULL;
}

static double time_kal(struct kal_range *r)
{
	double t0, t1;
	int fd;

	t0 = now_us();
	fd = syscall(__NR_kal_snapshot, r, 1, KAL_SNAPSHOT_STOP_THREADS);
	t1 = now_us();
	if (fd < 0) {
		perror("kal_snapshot");
		exit(1);
	}
	close(fd);
	return t1 - t0;
}

static double time_fork(void)
{
	double t0, t1;
	pid_t pid;

	t0 = now_us();
	pid = fork();
	if (pid == 0)
		_exit(0);
	t1 = now_us();
	waitpid(pid, NULL, 0);
	return t1 - t0;
}

/*
 * p50/p99 of kal_snapshot (STOP_THREADS) and fork() for one region; the
 * order alternates so that neither always runs right after the other's
 * teardown.
 */
static void measure(struct kal_range *r, int reps, double *k, double *f)
{
	for (int i = -2; i < reps; i++) {
		double tk, tf;

		if (i & 1) {
			tf = time_fork();
			tk = time_kal(r);
		} else {
			tk = time_kal(r);
			tf = time_fork();
		}
		if (i >= 0) {
			k[i] = tk;
			f[i] = tf;
		}
	}
}

static char *map_touch(size_t len, int thp, char **raw)
{
	char *p;

	*raw = mmap(NULL, len + HPAGE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (*raw == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	p = (char *)(((uintptr_t)*raw + HPAGE - 1) & ~(HPAGE - 1));
	madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len; i += 4096)
		p[i] = 1;
	return p;
}

/* Extra tables: a heap inside a bigger process, and the cost of the stop. */
static void extras(int reps, double *k, double *f)
{
	char a[32], b[32], c[32], d[32], *raw_o, *raw_h;
	char *other = map_touch(1024UL << 20, 0, &raw_o);
	struct kal_range r;
	char *heap;

	printf("KAL-BENCH:\nKAL-BENCH: 64 MiB heap (4 KiB pages) in a process that also has 1 GiB of other touched memory (not requested):\nKAL-BENCH:\n");
	printf("KAL-BENCH: | heap | kal_snapshot p50 | kal_snapshot p99 | fork p50 | fork p99 | fork/kal (p50) |\n");
	printf("KAL-BENCH: |---|---|---|---|---|---|\n");
	heap = map_touch(64UL << 20, 0, &raw_h);
	r.start = (uintptr_t)heap;
	r.len = 64UL << 20;
	measure(&r, reps, k, f);
	fmt(a, pct(k, reps, 0.5));
	fmt(b, pct(k, reps, 0.99));
	fmt(c, pct(f, reps, 0.5));
	fmt(d, pct(f, reps, 0.99));
	printf("KAL-BENCH: | 64 MiB | %s | %s | %s | %s | %.1fx |\n", a, b, c, d,
	       pct(f, reps, 0.5) / pct(k, reps, 0.5));
	munmap(raw_o, (1024UL << 20) + HPAGE);
	(void)other;

	printf("KAL-BENCH:\nKAL-BENCH: cost of stopping threads (one 4 KiB page captured, STOP_THREADS):\nKAL-BENCH:\n");
	printf("KAL-BENCH: | running threads | kal_snapshot p50 | kal_snapshot p99 |\n");
	printf("KAL-BENCH: |---|---|---|\n");
	r.len = 4096;
	for (int n = 0; n <= 3; n += 3) {
		pthread_t t[3];
		static unsigned long words[3][64];

		spin_stop = 0;
		for (int i = 0; i < n; i++)
			pthread_create(&t[i], NULL, spinner, words[i]);
		usleep(20000);
		measure(&r, reps, k, f);
		spin_stop = 1;
		for (int i = 0; i < n; i++)
			pthread_join(t[i], NULL);
		fmt(a, pct(k, reps, 0.5));
		fmt(b, pct(k, reps, 0.99));
		printf("KAL-BENCH: | %d | %s | %s |\n", n, a, b);
	}
	munmap(raw_h, (64UL << 20) + HPAGE);
}

int main(int argc, char **argv)
{
	static const size_t sizes[] = { 64UL << 20, 256UL << 20, 1024UL << 20 };
	int reps = argc > 1 ? atoi(argv[1]) : 30;
	double *k = calloc(reps, sizeof(double));
	double *f = calloc(reps, sizeof(double));

	printf("KAL-BENCH: | heap | pages | kal_snapshot p50 | kal_snapshot p99 | fork p50 | fork p99 | fork/kal (p50) |\n");
	printf("KAL-BENCH: |---|---|---|---|---|---|---|\n");
	for (int s = 0; s < 3; s++) {
		for (int thp = 0; thp < 2; thp++) {
			size_t len = sizes[s];
			long thp0 = meminfo_kb("AnonHugePages"), thp_kb;
			char a[32], b[32], c[32], d[32], *raw;
			char *p = map_touch(len, thp, &raw);
			struct kal_range r = { (uintptr_t)p, len };

			thp_kb = meminfo_kb("AnonHugePages") - thp0;
			measure(&r, reps, k, f);
			fmt(a, pct(k, reps, 0.5));
			fmt(b, pct(k, reps, 0.99));
			fmt(c, pct(f, reps, 0.5));
			fmt(d, pct(f, reps, 0.99));
			printf("KAL-BENCH: | %zu MiB | %s | %s | %s | %s | %s | %.1fx |\n",
			       len >> 20, thp ? (thp_kb * 1024 >= (long)len / 2 ?
						 "THP" : "THP (partial)") : "4 KiB",
			       a, b, c, d, pct(f, reps, 0.5) / pct(k, reps, 0.5));
			munmap(raw, len + HPAGE);
		}
	}
	extras(reps, k, f);
	printf("KAL-BENCH:\nKAL-BENCH: %d repetitions per cell, after 2 warm-up rounds\n", reps);
	return 0;
}
