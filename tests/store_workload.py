"""The workload of the crash and multi-process tests (test_crash.py, test_concurrency.py).

One graph of rules, defined the same way by the test process and by the child processes it starts
(`python -c "import store_workload; store_workload.main()" MODE CONFIG`, with this directory on
PYTHONPATH), so that the rule versions agree and a store written by the children serves the test.

    base(i)        a 3 MB array: a value file. Reads no parameter: shared by every scale.
    scaled(i)      a 3 MB array from base(i) and the global SCALE (an input by value): an edit of
                   SCALE gives new values to store.
    piece(i, k)    a few floats cut from scaled(i): small values, inline rows.
    stats(i)       a small dict over the pieces of scaled(i).
    total(n)       a float over stats(0..n-1): a fan-in of small values.
    slow()         a 3 MB array that takes SLOW seconds: the task one process builds and others reuse.
    own(who, i)    a 3 MB array of one process only (`who`), from the shared base(i) and slow().
    mine(who, n)   a small dict of one process over its own(who, 0..n-1).

Rule bodies append what ran to CALLS (written through a method only: not an input). They call
rules one by one, not with `rule.map`: tests/oracle.py evaluates plain calls only.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import numpy as np

import nbbuild
from nbbuild.store import serialisation

ITEMS = 3 * (1 << 20) // 8        # float64 items of a 3 MB array (value files start at 256 KB)
PIECES = 6
SCALE = 1
SLOW = 0.0
CALLS: list[str] = []


def define(b: nbbuild.Build) -> dict[str, nbbuild.Rule]:
    @b.rule
    def base(i):
        CALLS.append(f"base({i})")
        return np.arange(ITEMS, dtype=np.float64) * (i + 1)

    @b.rule
    def scaled(i):
        CALLS.append(f"scaled({i})")
        return base(i) * SCALE + i

    @b.rule
    def piece(i, k):
        CALLS.append(f"piece({i}, {k})")
        part = scaled(i)[k * 1000:(k + 1) * 1000]
        return (i, k, float(part.sum()), float(part.max()))

    @b.rule
    def stats(i):
        CALLS.append(f"stats({i})")
        parts = [piece(i, k) for k in range(PIECES)]
        return {"i": i, "sum": sum(p[2] for p in parts), "max": max(p[3] for p in parts)}

    @b.rule
    def total(n):
        CALLS.append(f"total({n})")
        return sum(stats(i)["sum"] for i in range(n))

    @b.rule
    def slow():
        CALLS.append("slow()")
        time.sleep(SLOW)
        return np.linspace(0.0, 1.0, ITEMS)

    @b.rule
    def own(who, i):
        CALLS.append(f"own({who!r}, {i})")
        return base(i) * len(who) + slow()[::-1] + ord(who[0]) + i

    @b.rule
    def mine(who, n):
        CALLS.append(f"mine({who!r}, {n})")
        return {"who": who, "sums": [float(own(who, i).sum()) for i in range(n)]}

    return {r.__name__: r for r in (base, scaled, piece, stats, total, slow, own, mine)}


def crash_targets(rules: dict[str, nbbuild.Rule], n: int) -> list[nbbuild.Task]:
    """Everything the crash child builds at one scale: arrays, pieces, stats and the total."""
    return ([rules["total"].task(n)] + [rules["stats"].task(i) for i in range(n)]
            + [rules["scaled"].task(i) for i in range(n)])


def digest(value) -> str:
    return serialisation.value_hash(value)


# ---------------------------------------------------------------- the children

def _say(*parts) -> None:
    print(*parts, flush=True)


def _warnings_to_stderr() -> None:
    """Every nbbuild warning goes to stderr at once, as one line: the tests read them even from a
    child that was killed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("WARNING %(message)s"))
    logging.getLogger("nbbuild").addHandler(handler)


def crash_child(store: str, first_scale: int, builds: int, n: int, quota: int) -> None:
    """Build the crash targets at scales first_scale, first_scale + 1, ...: each build writes new
    arrays and pieces, evicts (a small quota) and prunes. Prints `built SCALE` after each build that
    finished and gave the oracle's values; a wrong value exits with status 3."""
    global SCALE
    _say("start")
    with nbbuild.Build(store, quota=quota, min_free=0, workers=2) as b:
        rules = define(b)
        _say("open")
        for k in range(builds):
            SCALE = first_scale + k
            targets = crash_targets(rules, n)
            values = b.build(*targets)
            for task, value in zip(targets, values):
                if digest(value) != digest(expected(task)):
                    _say(f"WRONG {task!r} at scale {SCALE}")
                    sys.exit(3)
            _say(f"built {SCALE}")
            if k % 2:
                b.gc()                               # evict down to the quota, prune, sweep
            else:
                b.store.set_setting("pruned", 0.0)   # the next build prunes on its way out
    _say("done")


def _wait_for(paths: list[str], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {paths}")
        time.sleep(0.005)


def _touch(path: str) -> None:
    with open(path + ".part", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".part", path)


def expected(task):
    """The oracle's value of a task (tests/oracle.py), without the sleep of slow(); what the
    oracle's calls append to CALLS is taken out again."""
    global SLOW
    from oracle import from_scratch

    slow, SLOW, ran = SLOW, 0.0, len(CALLS)
    try:
        return from_scratch(task)
    finally:
        SLOW = slow
        del CALLS[ran:]


def concurrent_child(cfg: dict) -> None:
    """One process of the multi-process tests. `cfg`: store, scale, slow, quota, ready (a file made
    once the store is open and read), steps, out (where the JSON report goes).

    Steps: ["wait", [paths]] waits for files; ["touch", path] makes one; ["build", specs] builds
    targets (specs: [[rule name, [args]], ...]); ["loop", seconds, gc, specs] builds the targets
    with a fresh Build each time, at scales first, first + 1, first + 2, first, ... for that long
    (three builds at least), evicting down to the quota (gc) after each build when `gc`. The
    report holds what ran (CALLS), what each build reported and when it ran, each target's value
    hash, and the targets whose value was not the oracle's."""
    global SCALE, SLOW

    SCALE, SLOW = cfg["scale"], cfg.get("slow", 0.0)
    report: dict = {"builds": [], "values": {}, "wrong": [], "evictions": 0}

    def opened():
        return nbbuild.Build(cfg["store"], quota=cfg.get("quota"), min_free=0, workers=2)

    def build(b, specs):
        rules = define(b)
        targets = [rules[name].task(*args) for name, args in specs]
        start = time.time()
        values = b.build(*targets)
        report["builds"].append({"scale": SCALE, "start": start, "end": time.time(),
                                 "executed": b.report.executed, "reused": b.report.reused})
        for task, value in zip(targets, values):
            report["values"][f"{task!r}@{SCALE}"] = digest(value)
            if digest(value) != digest(expected(task)):
                report["wrong"].append(f"{task!r}@{SCALE}")

    with opened() as b:
        b.store.refresh()            # read now: what the others write later comes in by refresh
        _touch(cfg["ready"])
        for step in cfg["steps"]:
            if step[0] == "wait":
                _wait_for(step[1])
            elif step[0] == "touch":
                _touch(step[1])
            elif step[0] == "build":
                build(b, step[1])
            elif step[0] == "loop":
                # a fresh Build each round, as a new kernel: it knows only what the store holds
                start, first, k = time.monotonic(), SCALE, 0
                while time.monotonic() - start < step[1] or k < 3:
                    SCALE = first + k % 3
                    with opened() as fresh:
                        build(fresh, step[3])
                        if step[2]:
                            report["evictions"] += fresh.gc()
                    k += 1
                SCALE = first
                report["rounds"] = k
            else:
                raise ValueError(step)
        report["calls"] = CALLS
    with open(cfg["out"] + ".part", "w") as f:
        json.dump(report, f)
    os.replace(cfg["out"] + ".part", cfg["out"])


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _warnings_to_stderr()
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    if mode == "crash":
        crash_child(cfg["store"], cfg["scale"], cfg["builds"], cfg["n"], cfg["quota"])
    elif mode == "concurrent":
        concurrent_child(cfg)
    else:
        raise SystemExit(f"unknown mode {mode}")


def command(mode: str, cfg: dict) -> list[str]:
    return [sys.executable, "-c", "import store_workload; store_workload.main()", mode, json.dumps(cfg)]


def environment() -> dict[str, str]:
    """The children's environment: this one (XDG_CONFIG_HOME, the tests' signing key, included),
    with the tests directory on the path and no store bounds from outside."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for name in ("NBBUILD_QUOTA", "NBBUILD_MIN_FREE", "NBBUILD_EVICTION", "NBBUILD_DIR"):
        env.pop(name, None)
    return env
