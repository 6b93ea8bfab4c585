"""A CPU-bound pure-Python graph on threads, on a process pool and on a Dask LocalCluster.

Graph: `top()` sums `work(i)` for i in range(TASKS), fetched as one group (rule.map); each
`work(i)` is a pure-Python loop of about 0.4 s (it holds the GIL: threads cannot overlap it).
Policy "none": every build runs every body. After one warm-up build (worker processes started,
modules imported), --rounds builds per executor, interleaved; the median wall time of each, and
the speedup against threads. Every executor must give the same value.

Run: python benchmarks/bench_executors.py [--markdown] [--rounds 3] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nbbuild  # noqa: E402
from common import revision  # noqa: E402

TASKS = 8
LOOP = 4_000_000


def graph(b):
    @b.rule(policy="none")
    def work(i):
        total = 0
        for k in range(LOOP):          # pure Python: holds the GIL
            total += (k * k + i) % 7
        return total

    @b.rule(policy="none")
    def top():
        return sum(work.map(range(TASKS)))
    return top


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    import distributed
    client = distributed.Client(processes=True, n_workers=args.workers, threads_per_worker=1, dashboard_address=None)
    kinds = {"threads": "threads", "processes": "processes", "dask": client}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    values: dict[str, set] = {k: set() for k in kinds}
    with tempfile.TemporaryDirectory() as root:
        builds = {k: nbbuild.Build(os.path.join(root, k), workers=args.workers, executor=ex, progress=False)
                  for k, ex in kinds.items()}
        tops = {k: graph(b) for k, b in builds.items()}
        for k in kinds:                              # warm-up: pools started, modules imported
            values[k].add(tops[k]())
        for r in range(args.rounds):
            for k in (list(kinds) if r % 2 == 0 else list(reversed(kinds))):
                t0 = time.perf_counter()
                values[k].add(tops[k]())
                times[k].append(time.perf_counter() - t0)
        for b in builds.values():
            b.close()
    client.close()
    client.cluster.close()
    assert len(set().union(*values.values())) == 1, values
    base = statistics.median(times["threads"])
    print(f"Machine: {platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}, "
          f"nbbuild ({revision()})")
    print(f"{TASKS} CPU-bound tasks of ~0.4 s each (pure Python) + top, workers={args.workers}, "
          f"median of {args.rounds} builds each, interleaved.\n")
    head = ["executor", "median s", "best s", "speedup vs threads"]
    rows = [[k, f"{statistics.median(v):.2f}", f"{min(v):.2f}", f"{base / statistics.median(v):.2f}x"]
            for k, v in times.items()]
    if args.markdown:
        print("| " + " | ".join(head) + " |\n| " + " | ".join("--:" if i else "---" for i in range(len(head))) + " |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        for row in [head] + rows:
            print("  ".join(c.ljust(18) for c in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
