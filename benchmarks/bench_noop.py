"""No-op rebuild overhead of nbbuild, per task, against dask and a plain memoised recursion.

For graphs of N trivial tasks (integer leaves, sums above them) of two shapes:
  fan-in   one `top` task over N leaves;
  layered  100 layers of width N/100, each task reading 2-3 tasks of the layer below (seeded,
           deterministic edges), and one `top` task reading the whole last layer;
it measures, in microseconds per task (total seconds / number of tasks):
  first        nbbuild first build into a fresh empty store (workers=1);
  noop         nbbuild no-op rebuild in the same process (median, and min, of --repeat runs);
  1st noop     the first of those runs alone (the one right after the first build);
  fresh        nbbuild no-op rebuild in a fresh process over the same store: only `b.build` is
               timed, not imports or rule definitions (median of --repeat subprocesses);
  dask-thr     dask's threaded scheduler on the same graph as a plain dask graph dict;
  dask-sync    dask's synchronous scheduler on that graph;
  memo         a plain lru_cache recursion over the same edges, fresh memo per run: the floor.
Every system must compute the same final value. Run: python benchmarks/bench_noop.py [--markdown]
"""
from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

import dask
import dask.threaded

import nbbuild

LAYERS = 100
SHAPES = ("fan-in", "layered")
EDGES: tuple = ()  # layered_edges(N) of the graph being built; read by the `node` rule


def layered_edges(n: int) -> tuple:
    """EDGES[layer][i]: indices in layer-1 that task i of `layer` reads (layer 0: none).
    Each task reads its own index plus 1-2 random others, so every task is reachable from top."""
    width = max(1, n // LAYERS)
    edges = [tuple(() for _ in range(width))]
    for layer in range(1, LAYERS):
        row = []
        for i in range(width):
            rng = random.Random(layer * 100003 + i)
            others = [j for j in range(width) if j != i]
            extra = rng.sample(others, min(len(others), rng.choice((1, 2))))
            row.append(tuple(sorted([i, *extra])))
        edges.append(tuple(row))
    return tuple(edges)


def graph(shape: str, n: int) -> dict[str, tuple[int, list[str]]]:
    """{key: (leaf value, dependency keys)}: the one graph all systems run. The target is "top"."""
    if shape == "fan-in":
        g = {f"leaf-{i}": (i, []) for i in range(n)}
        g["top"] = (0, list(g))
        return g
    edges = layered_edges(n)
    g = {f"node-0-{i}": (i, []) for i in range(len(edges[0]))}
    for layer in range(1, LAYERS):
        for i, parents in enumerate(edges[layer]):
            g[f"node-{layer}-{i}"] = (0, [f"node-{layer - 1}-{j}" for j in parents])
    g["top"] = (0, [f"node-{LAYERS - 1}-{i}" for i in range(len(edges[-1]))])
    return g


# ---------------------------------------------------------------- nbbuild

def nbbuild_target(b: nbbuild.Build, shape: str, n: int) -> nbbuild.Task:
    """Define the rules of `shape` on `b`; the same code in every process, so one store serves all."""
    global EDGES
    if shape == "fan-in":
        @b.rule
        def leaf(i):
            return i

        @b.rule
        def top(n):
            return sum(leaf(i) for i in range(n))
        return top.task(n)

    EDGES = layered_edges(n)

    @b.rule
    def node(layer, i):
        return i if layer == 0 else sum(node(layer - 1, j) for j in EDGES[layer][i])

    @b.rule
    def top(width):
        return sum(node(LAYERS - 1, i) for i in range(width))
    return top.task(len(EDGES[-1]))


def timed(fn) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def child(shape: str, n: int, store: str) -> None:
    """In a fresh process: time one no-op rebuild over `store`; print seconds and the value."""
    with nbbuild.Build(store, workers=1) as b:
        target = nbbuild_target(b, shape, n)
        seconds, (value,) = timed(lambda: b.build(target))
        assert len(b.report.executed) == 0, f"fresh-process rebuild ran {len(b.report.executed)} tasks"
    print(seconds, value)


def bench_nbbuild(shape: str, n: int, repeat: int, expected: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="nbbuild-bench-") as store:
        with nbbuild.Build(store, workers=1) as b:
            target = nbbuild_target(b, shape, n)
            first, (value,) = timed(lambda: b.build(target))
            assert value == expected, (shape, n, value, expected)
            tasks = len(b.report.executed) + len(b.report.reused)
            noops = []
            for _ in range(repeat):
                seconds, (value,) = timed(lambda: b.build(target))
                assert len(b.report.executed) == 0 and value == expected
                noops.append(seconds)
        fresh = [fresh_process_noop(shape, n, store, expected) for _ in range(repeat)]
    return {"tasks": tasks, "first": first, "noop": statistics.median(noops),
            "noop_min": min(noops), "noop_1st": noops[0], "fresh": statistics.median(fresh)}


def fresh_process_noop(shape: str, n: int, store: str, expected: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", shape, str(n), store],
                         check=True, capture_output=True, text=True).stdout.split()
    assert int(out[1]) == expected, (shape, n, out)
    return float(out[0])


# ---------------------------------------------------------------- peers

def leaf_fn(i: int) -> int:
    return i


def dask_graph(g: dict) -> dict:
    return {k: (leaf_fn, v) if not deps else (sum, deps) for k, (v, deps) in g.items()}


def memo(g: dict) -> int:
    @functools.lru_cache(maxsize=None)
    def value(key: str) -> int:
        leaf, deps = g[key]
        return sum(value(d) for d in deps) if deps else leaf
    return value("top")


def median_time(fn, repeat: int, expected: int) -> float:
    runs = []
    for _ in range(repeat):
        seconds, value = timed(fn)
        assert value == expected, (value, expected)
        runs.append(seconds)
    return statistics.median(runs)


def bench(shape: str, n: int, repeat: int) -> dict[str, float]:
    g = graph(shape, n)
    expected = memo(g)
    dsk = dask_graph(g)
    row = bench_nbbuild(shape, n, repeat, expected)
    assert row["tasks"] == len(g), (row["tasks"], len(g))
    row["dask_thr"] = median_time(lambda: dask.threaded.get(dsk, "top"), repeat, expected)
    row["dask_sync"] = median_time(lambda: dask.get(dsk, "top"), repeat, expected)
    row["memo"] = median_time(lambda: memo(g), repeat, expected)
    return row


# ---------------------------------------------------------------- report

COLUMNS = ("shape", "tasks", "first", "noop (min)", "1st noop", "fresh", "dask-thr", "dask-sync", "memo",
           "dask-thr/noop", "dask-thr/fresh")


def cells(shape: str, row: dict[str, float]) -> list[str]:
    us = {k: v / row["tasks"] * 1e6 for k, v in row.items() if k != "tasks"}
    return [shape, f"{row['tasks']:,}", f"{us['first']:.1f}", f"{us['noop']:.2f} ({us['noop_min']:.2f})",
            f"{us['noop_1st']:.2f}", f"{us['fresh']:.2f}", f"{us['dask_thr']:.1f}",
            f"{us['dask_sync']:.1f}", f"{us['memo']:.2f}",
            f"{row['dask_thr'] / row['noop']:.1f}x", f"{row['dask_thr'] / row['fresh']:.1f}x"]


def table(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [COLUMNS, ["---"] + ["--:"] * (len(COLUMNS) - 1), *rows]
        return "\n".join("| " + " | ".join(r) + " |" for r in lines)
    widths = [max(len(r[c]) for r in [list(COLUMNS), *rows]) for c in range(len(COLUMNS))]
    lines = [list(COLUMNS), *rows]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in lines)


def machine() -> str:
    return (f"{platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, dask {dask.__version__}, nbbuild {nbbuild.__version__}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--child", nargs=3, metavar=("SHAPE", "N", "STORE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        shape, n, store = args.child
        child(shape, int(n), store)
        return
    rows = []
    for n in args.sizes:
        for shape in SHAPES:
            print(f"... {shape} N={n}", file=sys.stderr, flush=True)
            rows.append(cells(shape, bench(shape, n, args.repeat)))
    print(f"Machine: {machine()}")
    print("Microseconds per task; noop/fresh/peers: median of", args.repeat, "runs.\n")
    print(table(rows, args.markdown))


if __name__ == "__main__":
    main()
