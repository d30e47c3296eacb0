/* Allocator probe: exercises the basic calls once and reports which shared
 * object `malloc` resolves to, so the runner can verify that a preloaded
 * allocator is really the one in use (and that it works at all). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    char *p = malloc(100), *q = calloc(10, 100);
    if (!p || !q || q[999] != 0)
        return 3;
    strcpy(p, "probe");
    p = realloc(p, 100000);
    if (!p || strcmp(p, "probe") != 0)
        return 4;
    void *a = NULL;
    if (posix_memalign(&a, 4096, 5000) != 0 || ((unsigned long)a & 4095) != 0)
        return 5;
    free(a);
    free(p);
    free(q);
    Dl_info info;
    void *sym = dlsym(RTLD_DEFAULT, "malloc");
    if (!sym || !dladdr(sym, &info) || !info.dli_fname)
        return 6;
    printf("malloc=%s\n", info.dli_fname);
    return 0;
}
