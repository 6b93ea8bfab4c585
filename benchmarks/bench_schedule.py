"""Makespan of critical-path-first scheduling against first-in-first-out and against the lower bound.

Random layered DAGs (seeded): LAYERS layers of WIDTH tasks; a task reads 1-3 tasks of the layers
below it (more often the nearer ones); a `top` task reads every task nobody else reads. Each
task's own work is a sleep of a duration drawn from a log-normal distribution (median 15 ms, a
few ten times that), so threads overlap as real I/O or native code would. `workers` threads.

For each DAG: one build records the durations (traces), then builds in which every task runs
again (a global all of them read changes) alternate between `build.order = "fifo"` and
`"critical-path"`, --reps of each. The makespan is the wall time of a build. The lower bound
is max(longest chain of durations, total work / workers). Reported: each order's median
makespan over the bound, and critical-path over FIFO.

Two bounds: "bound" from the drawn durations, and "run bound", the same formula over the time
each sleep really took in that build (a thread woken from a sleep waits for a core: on a busy
2-core machine a 15 ms sleep takes 0.5-2 ms more, whatever the scheduler does). cp/run is the
median over builds of each build's makespan over its own run bound.

"ideal": critical-path-first list scheduling of the same DAG simulated with no overhead at all
(every task known up front, a free thread takes the ready task with the longest chain below it at
once, sleeps take exactly their durations): what the order alone achieves. It reaches the bound
(1.00-1.002x) on every seed here, so the bound is tight and what a real build adds to it is the
cost of running tasks on threads (a woken thread waiting for a core, handing a task over), which
cp/run separates from the sleeps' own overrun.

The price: working out priorities costs the scheduler about 1-2 µs a queued task. Measured too:
a full re-check (nothing known clean in memory, as in a fresh process) of 10,101 tasks of
microseconds (top -> 100 mid -> 100 leaf each, fetched with rule.map) on `workers` threads, in
µs per task, each order's median of 9.

Run: python benchmarks/bench_schedule.py [--markdown] [--dags 8] [--reps 3] [--workers 2]
"""
from __future__ import annotations

import argparse
import heapq
import os
import platform
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nbbuild  # noqa: E402
from common import revision  # noqa: E402

LAYERS, WIDTH = 6, 12


def make_dag(seed: int) -> tuple[list[tuple[int, ...]], list[float]]:
    rng = random.Random(seed)
    deps: list[tuple[int, ...]] = []
    for layer in range(LAYERS):
        for _ in range(WIDTH):
            if layer == 0:
                deps.append(())
                continue
            below = list(range(0, layer * WIDTH))
            near = list(range((layer - 1) * WIDTH, layer * WIDTH))
            picks = {rng.choice(near if rng.random() < 0.7 else below) for _ in range(rng.randint(1, 3))}
            deps.append(tuple(sorted(picks)))
    durations = [min(0.4, rng.lognormvariate(-4.2, 0.9)) for _ in deps]    # median 15 ms
    return deps, durations


def lower_bound(deps: list[tuple[int, ...]], durations: list[float], workers: int) -> tuple[float, float]:
    longest: list[float] = []
    for i, d in enumerate(deps):          # deps point to lower indices: one pass in order
        longest.append(durations[i] + max((longest[j] for j in d), default=0.0))
    chain = max(longest)
    return max(chain, sum(durations) / workers), chain


def ideal(deps: list[tuple[int, ...]], durations: list[float], workers: int) -> float:
    """Makespan of critical-path-first list scheduling simulated with no overhead (see the docstring)."""
    succ: list[list[int]] = [[] for _ in deps]
    waiting = [len(set(d)) for d in deps]
    for i, d in enumerate(deps):
        for j in set(d):
            succ[j].append(i)
    below = [0.0] * len(deps)
    for i in reversed(range(len(deps))):
        below[i] = durations[i] + max((below[s] for s in succ[i]), default=0.0)
    ready = [(-below[i], i) for i in range(len(deps)) if not waiting[i]]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []
    now, free = 0.0, workers
    for _ in deps:
        while ready and free:
            i = heapq.heappop(ready)[1]
            heapq.heappush(running, (now + durations[i], i))
            free -= 1
        now, i = heapq.heappop(running)
        free += 1
        for s in succ[i]:
            waiting[s] -= 1
            if not waiting[s]:
                heapq.heappush(ready, (-below[s], s))
    return now


def run_dag(seed: int, workers: int, reps: int) -> dict:
    deps, durations = make_dag(seed)
    read = {j for d in deps for j in d}
    sinks = [i for i in range(len(deps)) if i not in read]
    salt = [0]
    took = [0.0] * len(deps)        # how long each sleep really took, in the last build
    with tempfile.TemporaryDirectory() as store, nbbuild.Build(store, workers=workers, progress=False) as b:
        @b.rule
        def node(i):
            if deps[i]:
                node.map(deps[i])
            t0 = time.perf_counter()
            time.sleep(durations[i] + 0 * salt[0])
            took[i] = time.perf_counter() - t0
            return i

        @b.rule
        def top():
            return len(node.map(sinks))

        top()                                           # records every task's duration
        spans: dict[str, list[float]] = {"fifo": [], "critical-path": []}
        runs: dict[str, list[float]] = {"fifo": [], "critical-path": []}     # makespan / run bound
        for r in range(reps):
            for order in (("fifo", "critical-path") if r % 2 == 0 else ("critical-path", "fifo")):
                b.order = order
                salt[0] += 1
                t0 = time.perf_counter()
                assert top() == len(sinks)
                spans[order].append(time.perf_counter() - t0)
                runs[order].append(spans[order][-1] / lower_bound(deps, took, workers)[0])
                assert len(b.report.executed) == len(deps)      # top: spared by early cutoff
    bound, chain = lower_bound(deps, durations, workers)
    return {"seed": seed, "tasks": len(deps) + 1, "work": sum(durations), "chain": chain, "bound": bound,
            "ideal": ideal(deps, durations, workers),
            "fifo": statistics.median(spans["fifo"]), "cp": statistics.median(spans["critical-path"]),
            "fifo_run": statistics.median(runs["fifo"]), "cp_run": statistics.median(runs["critical-path"])}


def recheck_cost(workers: int, rounds: int = 9) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as store, nbbuild.Build(store, workers=workers, progress=False) as b:
        @b.rule
        def leaf(i):
            return i

        @b.rule
        def mid(j):
            return sum(leaf.map(range(j * 100, j * 100 + 100)))

        @b.rule
        def top():
            return sum(mid.map(range(100)))

        b.build(top)
        times: dict[str, list[float]] = {"fifo": [], "critical-path": []}
        for r in range(rounds):
            for order in (("fifo", "critical-path") if r % 2 == 0 else ("critical-path", "fifo")):
                b.order = order
                b._clean.clear()          # nothing known clean in memory: every task is visited
                t0 = time.perf_counter()
                b.build(top)
                times[order].append(time.perf_counter() - t0)
        return {k: statistics.median(v) * 1e6 / 10_101 for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dags", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows = [run_dag(seed, args.workers, args.reps) for seed in range(1, args.dags + 1)]
    print(f"Machine: {platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}, "
          f"nbbuild ({revision()})")
    print(f"{args.dags} random layered DAGs ({LAYERS} x {WIDTH} tasks + top), workers={args.workers}, "
          f"median of {args.reps} builds per order, the orders alternating.\n")
    head = ["seed", "tasks", "work s", "chain s", "bound s", "fifo s", "cp s", "ideal/bound", "fifo/bound", "cp/bound",
            "cp/fifo", "fifo/run", "cp/run"]
    print("| " + " | ".join(head) + " |" if args.markdown else "  ".join(head))
    if args.markdown:
        print("| " + " | ".join("--:" for _ in head) + " |")
    for r in rows:
        cells = [str(r["seed"]), str(r["tasks"]), f"{r['work']:.2f}", f"{r['chain']:.3f}", f"{r['bound']:.3f}",
                 f"{r['fifo']:.3f}", f"{r['cp']:.3f}", f"{r['ideal'] / r['bound']:.3f}", f"{r['fifo'] / r['bound']:.2f}", f"{r['cp'] / r['bound']:.2f}",
                 f"{r['cp'] / r['fifo']:.2f}", f"{r['fifo_run']:.2f}", f"{r['cp_run']:.2f}"]
        print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))

    def geo(xs: list[float]) -> float:
        return float(statistics.geometric_mean(xs))
    print(f"\ngeometric means: fifo/bound {geo([r['fifo'] / r['bound'] for r in rows]):.3f}, "
          f"cp/bound {geo([r['cp'] / r['bound'] for r in rows]):.3f}, "
          f"cp/fifo {geo([r['cp'] / r['fifo'] for r in rows]):.3f}, "
          f"fifo/run {geo([r['fifo_run'] for r in rows]):.3f}, cp/run {geo([r['cp_run'] for r in rows]):.3f}; "
          f"worst cp/fifo {max(r['cp'] / r['fifo'] for r in rows):.2f}")
    cost = recheck_cost(args.workers)
    print(f"full re-check of 10,101 µs tasks on {args.workers} threads: fifo {cost['fifo']:.1f} µs/task, "
          f"critical-path {cost['critical-path']:.1f} µs/task")
    return 0


if __name__ == "__main__":
    sys.exit(main())
