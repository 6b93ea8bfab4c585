"""nbbuild demo: a small pipeline built three times, each in a fresh Python process.

1. first run: every rule runs;
2. second run: nothing runs, everything is restored from the store;
3. after one input file changes: only the rules that depend on it run, and early cutoff stops
   the rest (the edit does not change the cleaned data's value).

Run: `make demo` (or `python notebooks/demo.py`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

PIPELINE = r'''
import statistics, sys, time
import nbbuild

with nbbuild.Build(sys.argv[1], workers=2) as b:
    @b.rule
    def raw(name):
        time.sleep(0.3)                                   # pretend this is slow
        with open(nbbuild.file(f"{sys.argv[2]}/{name}.csv")) as f:
            return [float(v) for v in f.read().split(",")]

    @b.rule
    def clean(name):
        time.sleep(0.2)
        return sorted(v for v in raw(name) if v >= 0)

    @b.rule
    def summary():
        return {name: round(statistics.mean(clean(name)), 2) for name in ("north", "south")}

    print("summary:", summary())
    r = b.report
    print(f"  ran:    {', '.join(r.executed) or 'nothing'}")
    print(f"  reused: {', '.join(r.reused) or 'nothing'}")
    print(f"  {r}")
'''


def main() -> None:
    work = tempfile.mkdtemp(prefix="nbbuild-demo-")
    try:
        data = os.path.join(work, "data")
        os.makedirs(data)
        for name, values in {"north": "3,1,-2,5", "south": "7,8,9"}.items():
            with open(os.path.join(data, f"{name}.csv"), "w") as f:
                f.write(values)
        store = os.path.join(work, "store")

        def run(title: str) -> None:
            print(f"\n== {title}")
            subprocess.run([sys.executable, "-c", PIPELINE, store, data], check=True)

        run("first run, empty store")
        run("second run, new process: everything restored from the store")
        with open(os.path.join(data, "north.csv"), "w") as f:
            f.write("5,3,-9,1")                          # a new negative value; clean() is unchanged
        run("after editing north.csv: raw('north') and clean('north') run, early cutoff spares summary()")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
