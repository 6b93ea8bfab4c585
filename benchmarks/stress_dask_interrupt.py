"""Issue 15, item 3: an interrupt on Dask returns within seconds, also with both cores busy.

Runs tests/test_remote.py's interrupt test on Dask RUNS times in a row (a fresh pytest, and so a
fresh LocalCluster, each time) while one busy loop per core runs, and prints each run's outcome
and the test's own duration. Exit 1 if any run failed.

    .venv/bin/python benchmarks/stress_dask_interrupt.py [RUNS]     (default 20)
"""
from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import time

TEST = ("tests/test_remote.py::test_an_interrupt_cancels_remote_work_stores_nothing_and_leaves_the_executor_usable"
        "[dask]")


def hog(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        sum(range(10_000))


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=hog, args=(stop,), daemon=True) for _ in range(os.cpu_count() or 2)]
    for p in hogs:
        p.start()
    failed = 0
    try:
        for i in range(1, runs + 1):
            start = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=1",
                                  TEST], cwd=root, capture_output=True, text=True)
            took = re.search(r"([\d.]+)s call", out.stdout)
            ok = out.returncode == 0
            failed += not ok
            print(f"run {i:2}/{runs}: {'passed' if ok else 'FAILED'}, the test {took.group(1) if took else '?'} s, "
                  f"pytest {time.monotonic() - start:.1f} s", flush=True)
            if not ok:
                failure = os.path.join(root, f".stress-failure-{i}.log")
                with open(failure, "w") as f:
                    f.write(out.stdout + out.stderr)
                print(f"   its output: {failure}", flush=True)
    finally:
        stop.set()
        for p in hogs:
            p.join()
    print(f"{runs - failed} passed, {failed} failed (with {len(hogs)} busy loops)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
