/* A program that adopts rmalloc by linking (-lrmalloc), not by LD_PRELOAD:
 * it uses rmalloc's own header and must find malloc served by librmalloc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <rmalloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
  const char *v = rmalloc_version();
  printf("version: %s\n", v ? v : "(null)");
  if (!v || strncmp(v, "rmalloc", 7) != 0)
    return 1;
  Dl_info info;
  void *m = dlsym(RTLD_DEFAULT, "malloc");
  if (!m || !dladdr(m, &info) || !info.dli_fname) {
    printf("cannot resolve malloc\n");
    return 1;
  }
  printf("malloc from: %s\n", info.dli_fname);
  if (!strstr(info.dli_fname, "rmalloc"))
    return 1;
  char *words[1000];
  for (int i = 0; i < 1000; i++) {
    words[i] = malloc(16 + (size_t)i);
    if (!words[i])
      return 1;
    snprintf(words[i], 16 + (size_t)i, "word %d", i);
  }
  for (int i = 0; i < 1000; i += 3)
    words[i] = realloc(words[i], 4000);
  long sum = 0;
  for (int i = 0; i < 1000; i++) {
    sum += atoi(words[i] + 5);
    free(words[i]);
  }
  printf("sum: %ld\n", sum);
  if (sum != 999L * 1000 / 2)
    return 1;
  int heap = rmalloc_check_heap();
  printf("check_heap: %d\n", heap);
  return heap == 0 ? 0 : 1;
}
