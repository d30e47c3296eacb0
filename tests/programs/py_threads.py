"""Multithreaded, allocation-heavy Python workload with deterministic output.

Run by tests/programs.rs under glibc and under LD_PRELOAD=librmalloc.so
(with PYTHONMALLOC=malloc, so every object goes through malloc/free/realloc);
the two stdouts must be identical.

Threads work on private data (results are deterministic per task), and also
exchange objects through queues so that blocks allocated in one thread are
freed in another.  zlib/hashlib release the GIL, so their internal mallocs run
truly in parallel.
"""

import hashlib
import json
import queue
import random
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

N_THREADS = 8


def digest(obj):
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


def dict_churn(seed):
    """Grow/shrink dicts of mixed key types; many small allocations."""
    rng = random.Random(seed)
    d = {}
    for i in range(60000):
        k = rng.randrange(20000)
        if rng.random() < 0.6:
            d[k] = ("v%d" % k) * rng.randrange(1, 8)
            d[str(k)] = [k] * rng.randrange(0, 5)
        else:
            d.pop(k, None)
            d.pop(str(k), None)
    return digest(sorted((type(k).__name__, str(k), repr(v)) for k, v in d.items()))


def realloc_growth(seed):
    """bytearray/list growth and shrink: realloc paths, incl. mmap-sized blocks."""
    rng = random.Random(seed)
    out = []
    for round_ in range(6):
        b = bytearray()
        target = rng.randrange(1 << 16, 3 << 20)
        while len(b) < target:
            b += bytes([rng.randrange(256)]) * rng.randrange(1, 4096)
        del b[target // 3 :]
        lst = []
        for i in range(rng.randrange(10000, 50000)):
            lst.append(i * round_)
        del lst[len(lst) // 2 :]
        out.append((len(b), zlib.crc32(b), len(lst), sum(lst)))
    return digest(out)


def big_blocks(seed):
    """Large buffers (above the mmap threshold) and compression in C code."""
    rng = random.Random(seed)
    out = []
    for i in range(8):
        size = rng.randrange(256 << 10, 4 << 20)
        chunk = bytes(rng.randrange(256) for _ in range(4096))
        data = (chunk * (size // 4096 + 1))[:size]
        comp = zlib.compress(data, 6)
        back = zlib.decompress(comp)
        assert back == data
        out.append((size, len(comp), hashlib.sha1(back).hexdigest()))
    return digest(out)


def json_strings(seed):
    """JSON round trips and string building: many short-lived objects."""
    rng = random.Random(seed)
    docs = []
    for i in range(300):
        doc = {
            "id": i,
            "name": "".join(chr(rng.randrange(0x20, 0x2FF)) for _ in range(rng.randrange(1, 60))),
            "tags": [str(rng.random()) for _ in range(rng.randrange(0, 20))],
            "nested": {"a": list(range(rng.randrange(0, 200))), "b": None},
        }
        s = json.dumps(doc, sort_keys=True)
        assert json.loads(s) == doc
        docs.append(s)
    return digest(hashlib.md5("".join(docs).encode()).hexdigest())


TASKS = [dict_churn, realloc_growth, big_blocks, json_strings]


def pool_phase():
    results = {}
    with ThreadPoolExecutor(max_workers=N_THREADS) as ex:
        futs = {}
        for seed in range(24):
            fn = TASKS[seed % len(TASKS)]
            futs[(fn.__name__, seed)] = ex.submit(fn, seed)
        for key in sorted(futs):
            results[key] = futs[key].result()
    for (name, seed), value in sorted(results.items()):
        print("pool %-15s seed=%2d %s" % (name, seed, value))


def producer(q, seed, n):
    rng = random.Random(seed)
    for i in range(n):
        size = rng.choice((8, 24, 100, 1000, 5000, 70000, 300000))
        q.put((seed, i, bytes([i % 256]) * size, {"k%d" % j: j for j in range(i % 17)}))
    q.put(None)


def consumer(q, n_producers, out):
    done = 0
    total = 0
    count = 0
    while done < n_producers:
        item = q.get()
        if item is None:
            done += 1
            continue
        seed, i, payload, d = item
        total += len(payload) + sum(d.values()) + seed
        count += 1
        del item, payload, d  # freed in this (consumer) thread
    out.append((count, total))


def queue_phase():
    """Producers allocate, consumers free: cross-thread frees."""
    q = queue.Queue(maxsize=64)
    out = []
    producers = [threading.Thread(target=producer, args=(q, s, 1500)) for s in range(4)]
    consumers = [threading.Thread(target=consumer, args=(q, 2, out)) for _ in range(2)]
    # Each consumer stops after seeing two end markers; total across both is fixed.
    for t in consumers + producers:
        t.start()
    for t in producers + consumers:
        t.join()
    print("queue items=%d bytes=%d" % (sum(c for c, _ in out), sum(t for _, t in out)))


def churn_threads():
    """Many short-lived threads, each allocating a little (thread cache setup/teardown)."""
    results = [None] * 400

    def work(i):
        results[i] = sum(len(str(x)) for x in range(i * 10))

    for batch in range(0, 400, 50):
        ts = [threading.Thread(target=work, args=(i,)) for i in range(batch, batch + 50)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    print("churn threads=%d checksum=%d" % (len(results), sum(results)))


def fork_phase():
    """fork() while other threads are busy in malloc/free: the child must not
    deadlock on an allocator lock held by a thread that does not exist in it."""
    import os

    stop = threading.Event()

    def busy(seed):
        rng = random.Random(seed)
        keep = []
        while not stop.is_set():
            keep.append(bytes(rng.randrange(1, 70000)))
            if len(keep) > 50:
                del keep[: rng.randrange(1, 50)]
            json.dumps([str(x) for x in range(rng.randrange(1, 300))])

    workers = [threading.Thread(target=busy, args=(s,)) for s in range(3)]
    for t in workers:
        t.start()
    ok = 0
    for i in range(20):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: allocate, report, leave without cleanup
            os.close(r)
            data = json.dumps({str(j): "x" * (j % 300) for j in range(3000)})
            big = bytearray(1 << 20)
            os.write(w, hashlib.sha1(data.encode() + bytes(big)).hexdigest().encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            answer = f.read()
        _, status = os.waitpid(pid, 0)
        if status == 0 and len(answer) == 40:
            ok += 1
    stop.set()
    for t in workers:
        t.join()
    print("fork children=20 ok=%d" % ok)


def main():
    print("python %d.%d" % sys.version_info[:2])
    pool_phase()
    queue_phase()
    churn_threads()
    fork_phase()
    print("done")


if __name__ == "__main__":
    main()
