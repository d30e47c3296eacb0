#!/usr/bin/env python3
"""Sum a callgrind output file: the total instruction count, and the
inclusive instructions of every call into an allocator entry point (malloc,
free, calloc, realloc, the memalign family, malloc_usable_size, and glibc's
__libc_* names for them) from a caller that is not itself an entry point, so
that realloc calling malloc is not counted twice.

    alloc_instr.py FILE [N]   prints "total T alloc A name=I ...", and with N
                              the N functions of largest self cost."""
import sys, re
ENTRY = {"malloc","free","calloc","realloc","posix_memalign","aligned_alloc","memalign",
         "valloc","pvalloc","malloc_usable_size","__libc_malloc","__libc_free","__libc_calloc",
         "__libc_realloc","__libc_memalign","cfree","__malloc","__free","reallocarray","__libc_reallocarray"}
def main(path):
    names = {}  # (kind,id)->name
    def resolve(kind, val):
        m = re.match(r'\((\d+)\)(?:\s+(.*))?$', val)
        if not m: return val
        i, n = m.group(1), m.group(2)
        if n is not None: names[(kind,i)] = n
        return names.get((kind,i), '?')
    fn = None; cfn = None; total = None
    alloc = 0; pending = False; calls_by = {}
    selfcost = {}
    npos = 1  # position columns before the costs ("positions: instr line" gives 2)
    for line in open(path):
        line = line.rstrip('\n')
        if line.startswith('positions:'):
            npos = len(line.split()) - 1; continue
        if line.startswith('fn='):
            fn = resolve('fn', line[3:]); continue
        if line.startswith('cfn='):
            cfn = resolve('fn', line[4:]); continue
        if line.startswith(('ob=','fl=','fi=','fe=')):
            k = line[:2]; resolve(k if k!='fe' and k!='fi' else 'fl', line[3:]); continue
        if line.startswith('cob='): resolve('ob', line[4:]); continue
        if line.startswith(('cfi=','cfl=')): resolve('fl', line[4:]); continue
        if line.startswith('calls='):
            pending = True; continue
        if line.startswith('totals:') or line.startswith('summary:'):
            total = int(line.split()[1]); continue
        if line and (line[0].isdigit() or line[0] in '+-*'):
            parts = line.split()
            if len(parts) <= npos:
                pending = False; continue
            cost = int(parts[npos])
            if pending:
                if cfn in ENTRY and fn not in ENTRY:
                    alloc += cost
                    calls_by[cfn] = calls_by.get(cfn,0)+cost
                pending = False
            else:
                selfcost[fn] = selfcost.get(fn,0)+cost
    return total, alloc, calls_by, selfcost
if __name__ == '__main__':
    t, a, by, sc = main(sys.argv[1])
    print(f"total {t} alloc {a} " + " ".join(f"{k}={v}" for k,v in sorted(by.items())))
    if len(sys.argv) > 2:
        for k,v in sorted(sc.items(), key=lambda x:-x[1])[:int(sys.argv[2])]:
            print(f"  {v:>12} {k}")
