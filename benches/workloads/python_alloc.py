"""Allocation-heavy Python: records, JSON round trips, string building,
sorting and dictionaries, the everyday work of a Python service or script.
Deterministic: prints digests of what it computed, never timings."""

import hashlib
import json
import random
import sys
from collections import Counter, defaultdict

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
rng = random.Random(12345)
WORDS = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12)))
         for _ in range(5000)]
digest = hashlib.sha256()


def record(i):
    return {
        "id": i,
        "name": "user%07d" % i,
        "tags": [rng.choice(WORDS) for _ in range(rng.randint(1, 8))],
        "score": round(rng.random() * 1000, 3),
        "bio": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))),
    }


for batch in range(3):
    recs = [record(batch * 100000 + i) for i in range(max(500, int(8000 * scale)))]
    text = json.dumps(recs, sort_keys=True)
    back = json.loads(text)
    digest.update(hashlib.sha256(text.encode()).digest())

    by_tag = defaultdict(list)
    for r in back:
        for t in r["tags"]:
            by_tag[t].append(r["id"])
    counts = Counter({t: len(v) for t, v in by_tag.items()})
    digest.update(repr(counts.most_common(20)).encode())

    back.sort(key=lambda r: (-r["score"], r["name"]))
    digest.update(",".join(r["name"] for r in back[:1000]).encode())

    # Strings growing, splitting and joining; bytes and bytearrays of varied size.
    words = " ".join(r["bio"] for r in back).split()
    digest.update(str(len(words)).encode())
    buf = bytearray()
    for w in words[:200000]:
        buf += w.encode() * 3
    digest.update(hashlib.sha256(bytes(buf)).digest())
    del recs, back, text, by_tag, words, buf

print("python digest", digest.hexdigest())
