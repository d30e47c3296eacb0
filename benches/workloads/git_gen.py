"""Write a `git fast-import` stream for the benchmark repository to stdout.

A source tree of FILES text files evolves over COMMITS commits; each commit
edits a few files (replacing, inserting and deleting lines).  Content, authors
and dates are all derived from a fixed seed, so the repository (and so the
measured `git log -p` output) is identical on every run and machine."""

import random
import sys

COMMITS = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
FILES = 120
rng = random.Random(7)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10))) for _ in range(3000)]
out = sys.stdout.buffer


def line():
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))


files = {"src/mod%03d/file%03d.c" % (i % 12, i): [line() for _ in range(rng.randint(50, 400))] for i in range(FILES)}


def blob(path):
    data = ("\n".join(files[path]) + "\n").encode()
    out.write(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data))


for c in range(COMMITS):
    when = 1700000000 + c * 3600
    msg = ("change %d: %s\n" % (c, line())).encode()
    out.write(b"commit refs/heads/main\n")
    out.write(b"committer Bench <bench@example.com> %d +0000\n" % when)
    out.write(b"data %d\n%s" % (len(msg), msg))
    paths = sorted(files) if c == 0 else rng.sample(sorted(files), rng.randint(1, 6))
    for p in paths:
        lines = files[p]
        for _ in range(rng.randint(1, 10)):
            k = rng.randrange(len(lines))
            op = rng.random()
            if op < 0.5:
                lines[k] = line()
            elif op < 0.8:
                lines.insert(k, line())
            elif len(lines) > 20:
                del lines[k]
        blob(p)
    out.write(b"\n")
