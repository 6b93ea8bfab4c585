"""Large values at disk speed: nbbuild's store against np.save, joblib, pickle and diskcache.

For a float64 array (default 1 GB) and a mixed pandas DataFrame (default ~100 MB) it measures, in
one run and in one directory, the seconds to store and to load the value with:
  nbbuild    `store.put_value(serialisation.pickle_value(v))` on a fresh nbbuild Store (quota off):
             pickles out-of-band, writes a signed value file, hashes while writing; load
             `store.load(digest)`: checks the signature, reads, checks the hash, unpickles;
  engine     (load only) a fresh `nbbuild.Build` over a store holding the value: `b.build(task)`;
  np         np.save / np.load (array only);
  np-4k      the same, with numpy's madvise(MADV_HUGEPAGE) of large arrays turned off for the load;
  joblib     joblib.dump / joblib.load (no compression, no mmap);
  pickle5    pickle.dump(protocol=5) to a file / pickle.load from it (buffers in-band);
  diskcache  diskcache.Cache.set / get (what nbbuild's store is built on; pickles in-band).
Every repeat runs every method, in a new (seeded) order each repeat: on a VM that hands freed
memory back to its host (virtio-balloon free page reporting), reusing memory another method has
just freed is slow, so a time depends on what ran before it, and no method may always follow the
same one. Nothing is dropped from the page cache: loads read what was just written, as a notebook
re-run does. `os.sync()` (untimed) runs before each timed operation, so that no write pays for
the dirty pages of the one before. The table gives the best and the median of --repeat runs
(noise only ever adds time: the best is the cost of the method, the median what a run met);
files are removed once loaded.

Hashing overhead: nbbuild's store with the hash computed while writing vs the same write with
the hash given (nothing hashed), and its load with vs without the hash check (benchmark-only
patch), in --pairs adjacent pairs of alternating order: the median of the per-pair ratios.
Peak memory: in a fresh subprocess per method, the peak RSS (VmHWM) after one load of the array
minus the RSS before it, as a multiple of the array's size: 1.00x means one copy.
Run: python benchmarks/bench_values.py [--markdown] [--quick]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import diskcache
import joblib
import numpy as np
import pandas as pd
import psutil
import xxhash
from numpy._core import multiarray as _np_multiarray

import nbbuild
from common import revision
from nbbuild.store import serialisation, valuefile
from nbbuild.store.store import Store

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, ".work")         # git-ignored; on the same disk as the repository


# ---------------------------------------------------------------- values

def make_array(nbytes: int) -> np.ndarray:
    return np.random.default_rng(0).random(nbytes // 8)


def make_frame(nbytes: int) -> pd.DataFrame:
    """A notebook-like table: 8 float64 columns, 3 int64 columns, one categorical and one object
    column of short strings (1,000 distinct values, as a parsed CSV's id column has); 100 bytes
    of numbers per row."""
    rows = max(1000, nbytes // 100)
    rng = np.random.default_rng(1)
    cols: dict[str, Any] = {f"x{i}": rng.standard_normal(rows) for i in range(8)}
    cols.update({f"n{i}": rng.integers(0, 10**6, rows) for i in range(3)})
    words = np.array([f"item-{i:04d}" for i in range(1000)], dtype=object)
    cols["kind"] = pd.Categorical(rng.choice(["a", "b", "c", "d"], rows))
    cols["name"] = words[rng.integers(0, 1000, rows)]
    return pd.DataFrame(cols)


def same(a: Any, b: Any, full: bool) -> bool:
    if isinstance(a, np.ndarray):
        if full:
            return bool(np.array_equal(a, b))
        step = max(1, len(a) // 1000)
        return b.shape == a.shape and bool(np.array_equal(a[::step], b[::step]))
    return bool(a.equals(b)) if full else a.shape == b.shape and bool(a.iloc[::997].equals(b.iloc[::997]))


# ---------------------------------------------------------------- methods
# Each method is (store(value) -> handle, load(handle) -> value, drop(handle)); a handle is what
# the load needs (a path, a hash). Stores and caches are opened once, outside the timings.

Method = tuple[Callable[[Any], Any], Callable[[Any], Any], Callable[[Any], None]]


class _NoHash:
    """Stands in for xxhash in valuefile so that a load does everything but hash its buffers."""

    def __init__(self, digest: str):
        self.digest = digest

    def xxh3_128(self, data: Any = b"") -> Any:
        outer = self

        class _H:
            def update(self, _: Any) -> None:
                pass

            def hexdigest(self) -> str:
                return outer.digest
        return _H()


def methods(root: str, value: Any) -> dict[str, Method]:
    store = Store(os.path.join(root, "nbbuild"))
    store.quota, store.min_free = None, 0
    dc = diskcache.Cache(os.path.join(root, "diskcache"), eviction_policy="none", size_limit=2 ** 62)
    engine_prepare(os.path.join(root, "engine"), value)

    def path(name: str) -> str:
        return os.path.join(root, name)

    def unlink(p: str) -> None:
        os.unlink(p)

    def np_store(v: Any) -> str:
        np.save(path("a.npy"), v)
        return path("a.npy")

    def np_load_4k(p: str) -> Any:
        # numpy asks for transparent huge pages for large arrays (madvise); where faulting those
        # is slow (this VM) np.load pays for it: this is np.load on ordinary 4 KiB pages
        was = _np_multiarray._set_madvise_hugepage(False)
        try:
            return np.load(p)
        finally:
            _np_multiarray._set_madvise_hugepage(was)

    def jl_store(v: Any) -> str:
        joblib.dump(v, path("a.joblib"))
        return path("a.joblib")

    def pk_store(v: Any) -> str:
        with open(path("a.pkl"), "wb") as f:
            pickle.dump(v, f, protocol=5)
        return path("a.pkl")

    def pk_load(p: str) -> Any:
        with open(p, "rb") as f:
            return pickle.load(f)

    def dc_store(v: Any) -> str:
        dc.set("k", v)
        return "k"

    found: dict[str, Method] = {
        "nbbuild": (lambda v: nb_store(store, v), lambda d: nb_load(store, d), store.delete_value),
        "engine": (lambda v: None, lambda _: engine_load(path("engine"), value), lambda _: None),
        "np": (np_store, np.load, unlink),
        "np-4k": (np_store, np_load_4k, unlink),
        "joblib": (jl_store, joblib.load, unlink),
        "pickle5": (pk_store, pk_load, unlink),
        "diskcache": (dc_store, dc.get, dc.delete),
    }
    if not isinstance(value, np.ndarray):
        del found["np"], found["np-4k"]
    return found


def nb_store(store: Store, v: Any, digest: str | None = None) -> str:
    """nbbuild's write path; with `digest`, the hash is taken as known and nothing is hashed."""
    ser = serialisation.pickle_value(v)
    if digest is not None:
        ser.digest = digest
    why = store.put_value(ser)
    assert why is None, why
    return ser.digest


def nb_load(store: Store, digest: str, check: bool = True) -> Any:
    """nbbuild's read path; without `check`, the buffers are not hashed (benchmark-only patch)."""
    real = valuefile.xxhash
    if not check:
        valuefile.xxhash = _NoHash(digest)      # type: ignore[assignment]
    try:
        found, v, why = store.load(digest)
    finally:
        valuefile.xxhash = real
    assert found, why
    return v


# `engine` loads through a Build. The rule makes the value itself (a user function, so its code is
# an input, and the size an argument): it runs once, untimed, and every fresh Build after that
# finds its trace and loads the value.

def _define(b: nbbuild.Build) -> Any:
    @b.rule
    def big(kind: str, nbytes: int):
        return make_array(nbytes) if kind == "array" else make_frame(nbytes)
    return big


def engine_target(value: Any) -> tuple[str, int]:
    if isinstance(value, np.ndarray):
        return "array", value.nbytes
    return "frame", FRAME_ARG[0]


FRAME_ARG = [0]     # the size make_frame was given, for the engine's rule to make the same frame


def engine_prepare(path: str, value: Any) -> None:
    with nbbuild.Build(path, quota="unlimited", min_free=0, workers=1) as b:
        (v,) = b.build(_define(b).task(*engine_target(value)))
        assert same(value, v, full=True)


def engine_load(path: str, value: Any) -> Any:
    with nbbuild.Build(path, quota="unlimited", min_free=0, workers=1) as b:
        (v,) = b.build(_define(b).task(*engine_target(value)))
        assert not b.report.executed, "the engine ran the rule instead of loading its value"
    return v


# ---------------------------------------------------------------- timing

def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    os.sync()      # untimed: no write pays for the dirty pages of the one before it
    gc.collect()
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def bench(value: Any, root: str, repeat: int, label: str) -> dict[str, dict[str, list[float]]]:
    ms = methods(root, value)
    times: dict[str, dict[str, list[float]]] = {m: {"store": [], "load": []} for m in ms}
    names = list(ms)
    for r in range(repeat):
        # a new order each repeat (seeded): what ran just before a method changes its time here
        # (memory just freed is slow to reuse, see the docstring), so no method always follows
        # the same one
        order = names[:]
        random.Random(r).shuffle(order)
        for name in order:
            print(f"... {label} repeat {r + 1}/{repeat}: {name}", file=sys.stderr, flush=True)
            store, load, drop = ms[name]
            seconds, handle = timed(store, value)
            if name != "engine":
                times[name]["store"].append(seconds)
            seconds, loaded = timed(load, handle)
            times[name]["load"].append(seconds)
            assert same(value, loaded, full=r == 0), f"{name} loaded a different value"
            del loaded
            drop(handle)
    del times["engine"]["store"]
    return times


def hash_pairs(value: Any, root: str, pairs: int, label: str) -> dict[str, list[float]]:
    """Seconds of nbbuild's store with and without hashing, and of its load with and without the
    hash check, measured in adjacent pairs (order alternating) so that drift cancels out."""
    store = Store(os.path.join(root, "pairs"))
    store.quota, store.min_free = None, 0
    digest = serialisation.pickle_value(value).digest
    out: dict[str, list[float]] = {"store": [], "store-known": [], "load": [], "load-unchecked": []}
    for i in range(pairs):
        print(f"... {label} hashing pair {i + 1}/{pairs}", file=sys.stderr, flush=True)
        for known in ((False, True) if i % 2 == 0 else (True, False)):
            seconds, _ = timed(nb_store, store, value, digest if known else None)
            out["store-known" if known else "store"].append(seconds)
            store.delete_value(digest)
        nb_store(store, value)
        for check in ((True, False) if i % 2 == 0 else (False, True)):
            seconds, loaded = timed(nb_load, store, digest, check)
            out["load" if check else "load-unchecked"].append(seconds)
            del loaded
        store.delete_value(digest)
    store.close()
    return out


def hash_speed(value: np.ndarray, repeat: int) -> float:
    """Seconds to xxh3_128 the array in memory (the check a load does): median of `repeat`."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        xxhash.xxh3_128(memoryview(value).cast("B")).hexdigest()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


# ---------------------------------------------------------------- peak memory of a load

def _high_water() -> int:
    """This process's peak RSS in bytes. VmHWM, not getrusage's maxrss: a child started by
    posix_spawn/vfork inherits its parent's maxrss across exec, VmHWM starts afresh."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_child(method: str, path: str, digest: str) -> None:
    """In a fresh process: load the value once; print the peak RSS it added, in bytes."""
    store = Store(path) if method == "nbbuild" else None
    gc.collect()
    before = psutil.Process().memory_info().rss
    if method == "nbbuild":
        found, value, why = store.load(digest)  # type: ignore[union-attr]
        assert found, why
    elif method == "np":
        value = np.load(path)
    elif method == "joblib":
        value = joblib.load(path)
    else:
        with open(path, "rb") as f:
            value = pickle.load(f)
    print(_high_water() - before, value.nbytes)


def peak_memory(value: np.ndarray, root: str) -> dict[str, float]:
    """Peak RSS growth of a load, as a multiple of the array's size, per method."""
    store = Store(os.path.join(root, "nbbuild"))
    store.quota, store.min_free = None, 0
    ser = serialisation.pickle_value(value)
    store.put_value(ser)
    store.flush()
    np.save(os.path.join(root, "m.npy"), value)
    joblib.dump(value, os.path.join(root, "m.joblib"))
    with open(os.path.join(root, "m.pkl"), "wb") as f:
        pickle.dump(value, f, protocol=5)
    out = {}
    for method, path in (("nbbuild", store.path), ("np", os.path.join(root, "m.npy")),
                         ("joblib", os.path.join(root, "m.joblib")), ("pickle5", os.path.join(root, "m.pkl"))):
        print(f"... peak memory: {method}", file=sys.stderr, flush=True)
        text = subprocess.run([sys.executable, __file__, "--rss-child", method, path, ser.digest],
                              check=True, capture_output=True, text=True).stdout.split()
        out[method] = int(text[0]) / int(text[1])
    store.delete_value(ser.digest)
    store.close()
    for name in ("m.npy", "m.joblib", "m.pkl"):
        os.unlink(os.path.join(root, name))
    return out


# ---------------------------------------------------------------- report

def rows_for(times: dict[str, dict[str, list[float]]], nbytes: int, peers: tuple[str, ...]) -> list[list[str]]:
    """One row per method and operation. Speed relative to a peer is the peer's time / this time
    (1.00: as fast; above: faster), best against best, then median against median."""
    rows = []
    for name, ops in times.items():
        for op, runs in ops.items():
            best, mid = min(runs), statistics.median(runs)
            rel = []
            for peer in peers:
                other = times.get(peer, {}).get(op)
                rel.append(f"{min(other) / best:.2f} ({statistics.median(other) / mid:.2f})" if other else "")
            rows.append([name, op, f"{best:.3f}", f"{mid:.3f}", f"{nbytes / best / 1e9:.2f}", *rel])
    return rows


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [header, ["---", "---"] + ["--:"] * (len(header) - 2), *rows]
        return "\n".join("| " + " | ".join(r) + " |" for r in lines)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in [header, *rows])


def overhead(pairs: dict[str, list[float]], with_: str, without: str) -> str:
    """% added: median of the per-pair ratios, and best against best."""
    ratios = [a / b for a, b in zip(pairs[with_], pairs[without])]
    return (f"{(statistics.median(ratios) - 1) * 100:+.1f}% (median of {len(ratios)} paired ratios; "
            f"best {min(pairs[with_]):.3f} s vs {min(pairs[without]):.3f} s: "
            f"{(min(pairs[with_]) / min(pairs[without]) - 1) * 100:+.1f}%)")


def machine() -> str:
    return (f"{platform.machine()}, nproc {os.cpu_count()}, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}, numpy {np.__version__}, "
            f"pandas {pd.__version__}, joblib {joblib.__version__}, diskcache {diskcache.__version__}, "
            f"nbbuild {nbbuild.__version__} ({revision()})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0, help="array size in GB (10^9 bytes)")
    p.add_argument("--frame-mb", type=float, default=100.0, help="DataFrame size in MB (10^6 bytes of numbers)")
    p.add_argument("--repeat", type=int, default=7, help="runs of every method")
    p.add_argument("--pairs", type=int, default=7, help="paired runs for the hashing overhead")
    p.add_argument("--quick", action="store_true", help="0.25 GB array, 25 MB frame, 3 repeats, 3 pairs")
    p.add_argument("--dir", default=WORK, help="where the files go (a fresh subdirectory, removed after)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--raw", action="store_true", help="also print every run's seconds (JSON)")
    p.add_argument("--rss-child", nargs=3, metavar=("METHOD", "PATH", "DIGEST"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    if args.quick:
        args.gb, args.frame_mb, args.repeat, args.pairs = 0.25, 25.0, 3, 3
    measured = machine()     # before the run: the tree may change while it runs
    os.makedirs(args.dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="values-", dir=args.dir)
    try:
        array = make_array(int(args.gb * 1e9))
        FRAME_ARG[0] = int(args.frame_mb * 1e6)
        frame = make_frame(FRAME_ARG[0])
        frame_bytes = serialisation.pickle_value(frame).nbytes
        hashed = hash_speed(array, args.repeat)
        t_array = bench(array, os.path.join(root, "array"), args.repeat, "array")
        p_array = hash_pairs(array, os.path.join(root, "array"), args.pairs, "array")
        peaks = peak_memory(array, os.path.join(root, "array"))
        t_frame = bench(frame, os.path.join(root, "frame"), args.repeat, "frame")
        p_frame = hash_pairs(frame, os.path.join(root, "frame"), args.pairs, "frame")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"Machine: {measured}")
    print(f"Seconds: best and median of {args.repeat} interleaved repeats; GB = 10^9 bytes; 'vs X' = X's time / "
          "this time (above 1: faster than X), best vs best (median vs median).\n")
    print(f"float64 array, {array.nbytes / 1e9:.2f} GB:\n")
    head = ["method", "op", "best s", "median s", "GB/s", "vs np", "vs np-4k", "vs joblib", "vs pickle5"]
    print(table(head, rows_for(t_array, array.nbytes, ("np", "np-4k", "joblib", "pickle5")), args.markdown))
    print(f"\nHashing, store: {overhead(p_array, 'store', 'store-known')}")
    print(f"Hash check, load: {overhead(p_array, 'load', 'load-unchecked')}")
    print(f"xxh3_128 of the array in memory alone: {hashed:.3f} s ({array.nbytes / hashed / 1e9:.1f} GB/s)")
    print("Peak RSS added by one load in a fresh process (x array size): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in peaks.items()))
    print(f"\nDataFrame, {len(frame):,} rows x {frame.shape[1]} columns, {frame_bytes / 1e6:.0f} MB pickled "
          "(8 float64, 3 int64, 1 categorical, 1 object column of short strings):\n")
    head = ["method", "op", "best s", "median s", "GB/s", "vs pickle5", "vs joblib"]
    print(table(head, rows_for(t_frame, frame_bytes, ("pickle5", "joblib")), args.markdown))
    print(f"\nHashing, store: {overhead(p_frame, 'store', 'store-known')}")
    print(f"Hash check, load: {overhead(p_frame, 'load', 'load-unchecked')}")
    if args.raw:
        print("\n" + json.dumps({"array": t_array, "array pairs": p_array, "frame": t_frame, "frame pairs": p_frame}))


if __name__ == "__main__":
    main()
