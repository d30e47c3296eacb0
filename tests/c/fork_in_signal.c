/* fork() from a signal handler in a single-threaded program, while the
 * program sits in the whole-heap functions (mallopt, malloc_trim, mallinfo2,
 * malloc_info, the heap check), which hold arena locks for a long time on a
 * fragmented heap.  fork is async-signal-safe; glibc skips its malloc
 * locking while the process has one thread, so the handler never waits for
 * a lock the interrupted code holds.  A hang is turned into a failure by
 * alarm().
 * Usage: fork_in_signal [FORKS] */
#include "common.h"

#include <signal.h>
#include <sys/wait.h>
#include <time.h>

enum { BLOCKS = 20000 };

static volatile sig_atomic_t forks_done, fork_failures, forks_wanted;
static void *blocks[BLOCKS];
static timer_t timer;

/* One-shot timer, re-armed by the handler at a varying delay so that the
 * main loop runs between forks and the signal lands at varying points. */
static void arm(long usec) {
  struct itimerspec its = {{0, 0}, {0, usec * 1000}};
  timer_settime(timer, 0, &its, NULL);
}

static void on_timer(int sig) {
  (void)sig;
  int saved = errno;
  pid_t pid = fork();
  if (pid == 0)
    _exit(0);
  int st;
  if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fork_failures++;
  forks_done++;
  if (forks_done < forks_wanted)
    arm(100 + (forks_done * 7919L) % 900);
  errno = saved;
}

int main(int argc, char **argv) {
  t_start();
  int forks = argc > 1 ? atoi(argv[1]) : 200;
  forks_wanted = forks;
  alarm(60); /* a deadlock kills the program instead of hanging the run */
  int (*check_heap)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rmalloc_check_heap");
  /* A fragmented heap: many free chunks in the bins make the whole-heap
   * functions spend their time under the arena lock. */
  for (int i = 0; i < BLOCKS; i++)
    REQUIRE((blocks[i] = malloc(hide_size(24 + (size_t)(i * 37) % 2000))) != NULL);
  for (int i = 0; i < BLOCKS; i += 2) {
    free(blocks[i]);
    blocks[i] = NULL;
  }
  FILE *null = fopen("/dev/null", "w");
  REQUIRE(null != NULL);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_timer;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  REQUIRE(sigaction(SIGUSR1, &sa, NULL) == 0);
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_SIGNAL;
  sev.sigev_signo = SIGUSR1;
  REQUIRE(timer_create(CLOCK_MONOTONIC, &sev, &timer) == 0);
  arm(500);

  long rounds = 0;
  while (forks_done < forks) {
    switch (rounds++ % 5) {
    case 0:
      CHECK(mallopt(M_TRIM_THRESHOLD, 128 * 1024 + (int)(rounds % 3) * 4096) == 1);
      break;
    case 1:
      malloc_trim(0);
      break;
    case 2: {
      struct mallinfo2 mi = mallinfo2();
      CHECK(mi.uordblks > 0);
      break;
    }
    case 3:
      CHECK(malloc_info(0, null) == 0);
      break;
    default:
      if (check_heap)
        CHECK(check_heap() == 0);
    }
  }
  timer_delete(timer);
  alarm(0);
  fclose(null);
  for (int i = 0; i < BLOCKS; i++)
    free(blocks[i]);
  CHECKF(fork_failures == 0, "%d forks failed", (int)fork_failures);
  printf("forks from the handler: %d in %ld rounds\n", (int)forks_done, rounds);
  return t_finish();
}
