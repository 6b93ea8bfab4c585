"""Big values in a fresh process: nbbuild's store against np.load / np.save and pickle protocol 5.

What a kernel restart meets: a process that has never seen the value loads it and then uses it.
Each timed operation runs in a fresh Python process (imports and the value's making untimed):

  load   open the file (nbbuild: `Store(path).load(digest)`, which checks the signature and the
         hash before unpickling; np: `np.load(path)`; pickle5: `pickle.load(f)` of a file written
         with protocol 5, buffers in-band) and then touch every byte: the sum of every numeric
         column (categorical codes included), the total length of the strings of object columns.
         Reported: "load" (the load alone) and "load+touch" (both; the figure that counts: a map
         of the file does part of its work on first touch).
  store  nbbuild: `store.put_value(serialisation.pickle_value(v))` into a fresh store (hashing while
         writing, signing); np: `np.save`; pickle5: `pickle.dump(v, f, protocol=5)`.

Values: a float64 array (default 500 MB) and a DataFrame (default ~100 MB of numbers: 8 float64,
3 int64, a categorical and an object column of short strings; bench_values.make_frame). Methods
alternate their order repeat by repeat (nbbuild first, then the peer first); `os.sync()` runs
(untimed) before each operation. Files are loaded from the page cache (just written), as a
restarted kernel meets them; at most two values' files exist at a time. Ratios are speeds
relative to the peer: the peer's median time / nbbuild's (above 1: nbbuild faster).

Run: python benchmarks/bench_fresh.py [--markdown] [--mb 500] [--frame-mb 100] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
WORK = os.path.join(HERE, ".work")

CHILD = r"""
import json, os, pickle, sys, time
sys.path.insert(0, {here!r})
import numpy as np, pandas as pd
from nbbuild.store import serialisation
from nbbuild.store.store import Store
from bench_values import make_array, make_frame

def touch(v):
    if isinstance(v, np.ndarray):
        return float(np.add.reduce(v, axis=None))
    total = 0.0
    for name in v.columns:
        col = v[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            total += float(np.add.reduce(col.cat.codes.to_numpy()))
        elif col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
            total += sum(map(len, col.to_numpy()))
        else:
            total += float(np.add.reduce(col.to_numpy()))
    return total

op, method, kind, path, extra, nbytes = sys.argv[1:7]
if op == "load":
    store = Store(path) if method == "nbbuild" else None
    t0 = time.perf_counter()
    if method == "nbbuild":
        found, v, why = store.load(extra)
        assert found, why
    elif method == "np":
        v = np.load(path)
    else:
        with open(path, "rb") as f:
            v = pickle.load(f)
    t1 = time.perf_counter()
    touch(v)
    t2 = time.perf_counter()
    print(json.dumps([t1 - t0, t2 - t0]))
else:
    v = make_array(int(nbytes)) if kind == "array" else make_frame(int(nbytes))
    if method == "nbbuild":             # a store that exists, as a kernel's has
        store = Store(path)
        store.quota, store.min_free = None, 0
    os.sync()
    t0 = time.perf_counter()
    if method == "nbbuild":
        why = store.put_value(serialisation.pickle_value(v))
        assert why is None, why
        store.flush()
    elif method == "np":
        np.save(path, v)
    else:
        with open(path, "wb") as f:
            pickle.dump(v, f, protocol=5)
    t1 = time.perf_counter()
    print(json.dumps([t1 - t0]))
"""


def child(*args: Any) -> list[float]:
    out = subprocess.run([sys.executable, "-c", CHILD.format(here=HERE), *map(str, args)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def measure(kind: str, value: Any, nbytes: int, peer: str, root: str, repeat: int) -> dict[str, dict[str, list]]:
    from nbbuild.store import serialisation
    from nbbuild.store.store import Store
    import numpy as np

    runs: dict[str, dict[str, list]] = {m: {"load": [], "load+touch": [], "store": []} for m in ("nbbuild", peer)}
    # loads: both files written once
    store = Store(os.path.join(root, "nb"))
    store.quota, store.min_free = None, 0
    ser = serialisation.pickle_value(value)
    assert store.put_value(ser) is None
    store.flush()
    store.close()
    peer_path = os.path.join(root, "value.npy" if peer == "np" else "value.pkl")
    if peer == "np":
        np.save(peer_path, value)
    else:
        with open(peer_path, "wb") as f:
            pickle.dump(value, f, protocol=5)
    for r in range(repeat):
        for method in (("nbbuild", peer) if r % 2 == 0 else (peer, "nbbuild")):
            print(f"... {kind} load {r + 1}/{repeat}: {method}", file=sys.stderr, flush=True)
            os.sync()
            path = os.path.join(root, "nb") if method == "nbbuild" else peer_path
            load, both = child("load", method, kind, path, ser.digest, nbytes)
            runs[method]["load"].append(load)
            runs[method]["load+touch"].append(both)
    shutil.rmtree(os.path.join(root, "nb"))
    os.unlink(peer_path)
    # stores: one file at a time, removed at once
    for r in range(repeat):
        for method in (("nbbuild", peer) if r % 2 == 0 else (peer, "nbbuild")):
            print(f"... {kind} store {r + 1}/{repeat}: {method}", file=sys.stderr, flush=True)
            path = os.path.join(root, "s-nb") if method == "nbbuild" else peer_path
            runs[method]["store"].append(child("store", method, kind, path, "", nbytes)[0])
            if method == "nbbuild":
                shutil.rmtree(path)
            else:
                os.unlink(path)
    return runs


def report(title: str, runs: dict[str, dict[str, list]], peer: str, markdown: bool) -> None:
    head = ["op", "nbbuild median s (min)", f"{peer} median s (min)", f"speed vs {peer}", "nbbuild runs", f"{peer} runs"]
    rows = []
    for op in ("load", "load+touch", "store"):
        a, b = runs["nbbuild"][op], runs[peer][op]
        rows.append([op, f"{statistics.median(a):.3f} ({min(a):.3f})", f"{statistics.median(b):.3f} ({min(b):.3f})",
                     f"{statistics.median(b) / statistics.median(a):.2f}x",
                     " ".join(f"{x:.2f}" for x in a), " ".join(f"{x:.2f}" for x in b)])
    print(f"\n{title}\n")
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("| --- | " + " | ".join("--:" for _ in head[1:]) + " |")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in [head, *rows]:
            print("  ".join(r))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=500.0, help="array size in MB (10^6 bytes)")
    p.add_argument("--frame-mb", type=float, default=100.0, help="DataFrame size in MB of numbers")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dir", default=WORK, help="where the files go (a fresh subdirectory, removed after)")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    from bench_values import machine, make_array, make_frame
    measured = machine()
    os.makedirs(args.dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="fresh-", dir=args.dir)
    start = time.time()
    try:
        array_bytes = int(args.mb * 1e6)
        t_array = measure("array", make_array(array_bytes), array_bytes, "np", root, args.repeat)
        frame_bytes = int(args.frame_mb * 1e6)
        frame = make_frame(frame_bytes)
        shape = frame.shape
        t_frame = measure("frame", frame, frame_bytes, "pickle5", root, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"Machine: {measured}")
    print(f"Each operation in a fresh process; median (min) of {args.repeat}, methods alternating; "
          f"{time.time() - start:.0f} s in all; load average after: {os.getloadavg()[0]:.1f}")
    report(f"float64 array, {args.mb:.0f} MB:", t_array, "np", args.markdown)
    report(f"DataFrame, {shape[0]:,} rows x {shape[1]} columns (~{args.frame_mb:.0f} MB of numbers, "
           "an object column of short strings):", t_frame, "pickle5", args.markdown)


if __name__ == "__main__":
    main()
