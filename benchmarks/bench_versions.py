"""What asking for a rule's version costs (engine/version.py), computed and kept.

Before every build the engine asks for the version of every rule it knows (engine/verified.py);
a version is kept while what it was made of is the same object and immutable. Three rules:
- `immutables`: reads two numbers, a module function and a module attribute (kept);
- `array`: reads a NumPy array by value (never kept: an array changes in place);
- `computed`: the first rule with the kept version dropped before each call (what every call
  cost before versions were kept).

    .venv/bin/python benchmarks/bench_versions.py [--calls 2000]
"""
from __future__ import annotations

import argparse
import os
import sys
import timeit
from typing import Any

import numpy as np

from nbbuild.engine import version
from nbbuild.engine.version import rule_version

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import revision  # noqa: E402

SOURCE = """
def immutables():
    t = threshold * 2
    return np.sqrt(x0 + t) + np.pi

def array():
    return np.sum(a0) + threshold
"""


def never(obj) -> bool:
    return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    n = ap.parse_args().calls
    g: dict[str, Any] = {"__name__": "__main__", "np": np, "x0": 1, "threshold": 3.5, "a0": np.zeros(1000)}
    exec(SOURCE, g)
    immutables, array = g["immutables"], g["array"]

    def computed():
        version._kept.pop(immutables, None)
        rule_version(immutables, never)

    timings = {
        "kept (immutables)": lambda: rule_version(immutables, never),
        "computed (immutables, kept dropped)": computed,
        "array by value (never kept)": lambda: rule_version(array, never),
    }
    print(f"# bench_versions: {revision()}; µs per call, best of 5 runs of {n} calls")
    for name, call in timings.items():
        call()
        best = min(timeit.repeat(call, number=n, repeat=5)) / n
        print(f"{name:38s} {best * 1e6:8.1f}")


if __name__ == "__main__":
    main()
