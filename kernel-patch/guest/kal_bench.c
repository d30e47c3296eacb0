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
			char *raw = mmap(NULL, len + HPAGE, PROT_READ | PROT_WRITE,
					 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			char *p = (char *)(((uintptr_t)raw + HPAGE - 1) & ~(HPAGE - 1));
			struct kal_range r = { (uintptr_t)p, len };
			long thp0 = meminfo_kb("AnonHugePages"), thp_kb;
			char a[32], b[32], c[32], d[32];

			if (raw == MAP_FAILED) {
				perror("mmap");
				return 1;
			}
			madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
			for (size_t i = 0; i < len; i += 4096)
				p[i] = 1;
			thp_kb = meminfo_kb("AnonHugePages") - thp0;
			for (int i = -2; i < reps; i++) {
				double t0, t1;
				pid_t pid;
				int fd;

				t0 = now_us();
				fd = syscall(__NR_kal_snapshot, &r, 1,
					     KAL_SNAPSHOT_STOP_THREADS);
				t1 = now_us();
				if (fd < 0) {
					perror("kal_snapshot");
					return 1;
				}
				close(fd);
				if (i >= 0)
					k[i] = t1 - t0;

				t0 = now_us();
				pid = fork();
				if (pid == 0)
					_exit(0);
				t1 = now_us();
				waitpid(pid, NULL, 0);
				if (i >= 0)
					f[i] = t1 - t0;
			}
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
	printf("KAL-BENCH: %d repetitions per cell, after 2 warm-up rounds\n", reps);
	return 0;
}
