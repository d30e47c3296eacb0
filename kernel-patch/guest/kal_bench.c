// SPDX-License-Identifier: GPL-2.0
/*
 * Pause of kal_snapshot() against fork() of the same process, in the same
 * guest: heaps of 64 MiB to 4 GiB, of 4 KiB pages and of transparent huge
 * pages, with the default lazy page-table copy and with
 * KAL_SNAPSHOT_EAGER.  The pause is the time the calling thread spends in
 * the system call (for fork(), in the parent); with
 * KAL_SNAPSHOT_STOP_THREADS that is also how long the other threads are
 * held.  Then where the lazy copy moves the cost: the process' first write
 * into each pending 2 MiB region, reading the image, and snapshots taken
 * while the process keeps writing.  Prints Markdown tables.
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

/* A "Key: N kB" field of a /proc file such as /proc/meminfo, in kB. */
static long proc_kb(const char *path, const char *key)
{
	char line[256];
	long v = -1;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)) && line[strlen(key)] == ':')
			v = atol(line + strlen(key) + 1);
	fclose(f);
	return v;
}

static long meminfo_kb(const char *key)
{
	return proc_kb("/proc/meminfo", key);
}

/* This process' own, from /proc/self/smaps_rollup. */
static long self_kb(const char *key)
{
	return proc_kb("/proc/self/smaps_rollup", key);
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

#ifndef KAL_SNAPSHOT_EAGER
#define KAL_SNAPSHOT_EAGER 0x2
#endif

static int snap(struct kal_range *r, unsigned int flags, double *us)
{
	double t0 = now_us();
	int fd = syscall(__NR_kal_snapshot, r, 1,
			 KAL_SNAPSHOT_STOP_THREADS | flags);

	*us = now_us() - t0;
	if (fd < 0) {
		perror("kal_snapshot");
		exit(1);
	}
	return fd;
}

static unsigned int kal_flags;

static double time_kal(struct kal_range *r)
{
	double us;

	close(snap(r, kal_flags, &us));
	return us;
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

/* One row of the pause table: lazy, eager and fork() for one heap. */
static void pause_row(size_t len, int thp, int reps, double *k, double *f)
{
	long thp0 = meminfo_kb("AnonHugePages"), thp_kb;
	char a[32], b[32], c[32], d[32], e[32], g[32], *raw;
	char *p = map_touch(len, thp, &raw);
	struct kal_range r = { (uintptr_t)p, len };
	double *l = calloc(reps, sizeof(double));
	double fl50, fl99;

	thp_kb = meminfo_kb("AnonHugePages") - thp0;
	kal_flags = 0;
	measure(&r, reps, l, f);
	kal_flags = KAL_SNAPSHOT_EAGER;
	measure(&r, reps, k, f);
	fmt(a, pct(l, reps, 0.5));
	fmt(b, pct(l, reps, 0.99));
	fmt(c, pct(k, reps, 0.5));
	fmt(d, pct(k, reps, 0.99));
	fmt(e, fl50 = pct(f, reps, 0.5));
	fmt(g, fl99 = pct(f, reps, 0.99));
	(void)fl99;
	printf("KAL-BENCH: | %zu MiB | %s | %s | %s | %s | %s | %s | %s | %.0fx |\n",
	       len >> 20, thp ? (thp_kb * 1024 >= (long)len / 2 ?
				 "THP" : "THP (partial)") : "4 KiB",
	       a, b, c, d, e, g, fl50 / pct(l, reps, 0.5));
	munmap(raw, len + HPAGE);
	free(l);
}

/*
 * Where the lazy copy puts the work: the first write into each pending
 * 2 MiB region (copies that table, then the usual copy-on-write fault),
 * against the same write after an eager snapshot (the fault only); and
 * reading the whole image (the lazy image copies each table on the way).
 */
static void moved_cost(size_t len, int reps)
{
	size_t n = len / HPAGE;
	double *w = calloc(n, sizeof(double));
	char a[4][32], *raw, *p = map_touch(len, 0, &raw);
	struct kal_range r = { (uintptr_t)p, len };
	char *buf = malloc(1 << 20);

	printf("KAL-BENCH:\nKAL-BENCH: where the lazy copy moves the cost (%zu MiB of 4 KiB pages):\nKAL-BENCH:\n",
	       len >> 20);
	printf("KAL-BENCH: | snapshot | first write per 2 MiB p50 | p99 | read whole image | pause |\n");
	printf("KAL-BENCH: |---|---|---|---|---|\n");
	for (int eager = 0; eager < 2; eager++) {
		double pause, t0, rd;
		int fd;

		for (int rep = 0; rep < reps; rep++) {
			fd = snap(&r, eager ? KAL_SNAPSHOT_EAGER : 0, &pause);
			for (size_t i = 0; i < n; i++) {
				volatile char *q = p + i * HPAGE + 64;

				t0 = now_us();
				*q = *q + 1;
				w[i] = now_us() - t0;
			}
			close(fd);
		}
		fd = snap(&r, eager ? KAL_SNAPSHOT_EAGER : 0, &pause);
		t0 = now_us();
		for (size_t off = 0; off < len; off += 1 << 20)
			if (pread(fd, buf, 1 << 20, (off_t)(r.start + off)) != 1 << 20) {
				perror("pread");
				exit(1);
			}
		rd = now_us() - t0;
		close(fd);
		fmt(a[0], pct(w, n, 0.5));
		fmt(a[1], pct(w, n, 0.99));
		fmt(a[2], rd);
		fmt(a[3], pause);
		printf("KAL-BENCH: | %s | %s | %s | %s | %s |\n",
		       eager ? "eager" : "lazy", a[0], a[1], a[2], a[3]);
	}
	munmap(raw, len + HPAGE);
	free(buf);
	free(w);
}

/*
 * Snapshots of a heap that keeps being written, as under KAL: each round
 * takes a snapshot, writes random pages while the image is open (as the
 * program does while the scanner reads), then closes it.  The pause, the
 * time those writes take (with the lazy copy, the first write into each
 * pending 2 MiB region copies that table), and for THP whether the huge
 * pages are still huge afterwards (a write to a huge page shared with an
 * image splits the process' mapping, as after fork()).
 */
static void under_writes(size_t len, int reps, double *k, double *f)
{
	static const int rates[] = { 0, 16, 512, 8192 };
	size_t pages = len / 4096;
	char a[4][32];

	printf("KAL-BENCH:\nKAL-BENCH: snapshots while the process writes (%zu MiB, lazy; each round: snapshot, write random pages with the image open, close):\nKAL-BENCH:\n",
	       len >> 20);
	printf("KAL-BENCH: | heap pages | pages written per round | pause p50 | pause p99 | writes per round p50 | AnonHugePages after |\n");
	printf("KAL-BENCH: |---|---|---|---|---|---|\n");
	for (int thp = 0; thp < 2; thp++) {
		for (unsigned int j = 0; j < sizeof(rates) / sizeof(rates[0]); j++) {
			char *raw, *p = map_touch(len, thp, &raw);
			struct kal_range r = { (uintptr_t)p, len };
			unsigned int seed = 1;

			for (int i = -2; i < reps; i++) {
				double pause, t0;
				int fd = snap(&r, 0, &pause);

				t0 = now_us();
				for (int w = 0; w < rates[j]; w++)
					p[(rand_r(&seed) % pages) * 4096]++;
				if (i >= 0) {
					k[i] = pause;
					f[i] = now_us() - t0;
				}
				close(fd);
			}
			fmt(a[0], pct(k, reps, 0.5));
			fmt(a[1], pct(k, reps, 0.99));
			fmt(a[2], pct(f, reps, 0.5));
			printf("KAL-BENCH: | %s | %d | %s | %s | %s | %ld MiB |\n",
			       thp ? "THP" : "4 KiB", rates[j], a[0], a[1], a[2],
			       self_kb("AnonHugePages") >> 10);
			munmap(raw, len + HPAGE);
		}
	}
}

int main(int argc, char **argv)
{
	static const size_t sizes[] = { 64UL << 20, 256UL << 20, 1024UL << 20,
					4096UL << 20 };
	int reps = argc > 1 ? atoi(argv[1]) : 30;
	double *k = calloc(reps, sizeof(double));
	double *f = calloc(reps, sizeof(double));
	long mem_kb = meminfo_kb("MemTotal");

	printf("KAL-BENCH: | heap | pages | lazy p50 | lazy p99 | eager p50 | eager p99 | fork p50 | fork p99 | fork/lazy (p50) |\n");
	printf("KAL-BENCH: |---|---|---|---|---|---|---|---|---|\n");
	for (int s = 0; s < 4; s++) {
		/* fork() needs the heap's page tables twice over, plus slack. */
		if ((long)(sizes[s] >> 10) * 5 / 4 > mem_kb) {
			printf("KAL-BENCH: | %zu MiB | - | (guest too small) | | | | | | |\n",
			       sizes[s] >> 20);
			continue;
		}
		for (int thp = 0; thp < 2; thp++)
			pause_row(sizes[s], thp, reps, k, f);
	}
	moved_cost(1024UL << 20, 3);
	under_writes(1024UL << 20, reps, k, f);
	kal_flags = 0;
	extras(reps, k, f);
	printf("KAL-BENCH:\nKAL-BENCH: %d repetitions per cell, after 2 warm-up rounds; every snapshot with KAL_SNAPSHOT_STOP_THREADS\n", reps);
	return 0;
}
