"""What a fresh process's first rule version costs when it reaches installed packages and a module
next to the notebook (engine/version.py, engine/distributions.py): what each rule reused after a
kernel restart pays once. Issue 17, item 1.

Each measurement is one fresh process (the packages imported before the clock starts), for each
nbbuild checkout given, interleaved, `--runs` times; the median is printed, and whether every
checkout recorded the same packages and parts. Three rules:
- `pipeline`: reads pandas, numpy and matplotlib (notebooks/pipeline.ipynb's packages);
- `sklearn`: those and scikit-learn (a module named unlike its distribution);
- `local`: pandas and a module next to the notebook.

    .venv/bin/python benchmarks/bench_first_version.py [--runs 15] [checkout ...]   # default: this one
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r'''
import json, sys, time
sys.path.insert(0, sys.argv[2])
import matplotlib.pyplot as plt, numpy as np, pandas as pd
import helpers
from nbbuild.engine.version import rule_version

def pipeline(x):
    fig, ax = plt.subplots()
    return pd.DataFrame({"x": np.arange(3)})

def local(x):
    return helpers.clean(x), pd.DataFrame()

def sklearn_rule(x):
    return pipeline(x), sklearn.get_config()

if sys.argv[1] == "sklearn":
    import sklearn
rule = {"pipeline": pipeline, "local": local, "sklearn": sklearn_rule}[sys.argv[1]]
t = time.perf_counter()
v = rule_version(rule, lambda o: False)
import nbbuild
print(json.dumps({"ms": 1000 * (time.perf_counter() - t), "same": [v.packages, [p for p, _ in v.parts]],
                  "nbbuild": nbbuild.__file__}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("checkouts", nargs="*", default=[os.path.dirname(os.path.dirname(os.path.abspath(__file__)))])
    args = ap.parse_args()
    args.checkouts = [os.path.abspath(c) for c in args.checkouts]
    try:
        import sklearn  # noqa: F401
        rules = ["pipeline", "sklearn", "local"]
    except ImportError:
        rules = ["pipeline", "local"]
    print(f"# bench_first_version: {args.checkouts}, load average {os.getloadavg()[0]:.2f}")
    times: dict[tuple[str, str], list[float]] = {}
    seen: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "helpers.py"), "w") as f:
            f.write("def clean(x):\n    return x.strip()\n")
        for _ in range(args.runs):
            for rule in rules:
                for checkout in args.checkouts:
                    out = subprocess.run([sys.executable, "-c", CHILD, rule, folder], check=True, text=True, cwd=folder,
                                         capture_output=True, env=dict(os.environ, PYTHONPATH=checkout)).stdout
                    found = json.loads(out)
                    assert found["nbbuild"].startswith(os.path.join(checkout, "")), found["nbbuild"]
                    times.setdefault((rule, checkout), []).append(found["ms"])
                    seen.setdefault(rule, set()).add(json.dumps(found["same"]))
    for (rule, checkout), ms in times.items():
        print(f"  {rule:9s} {checkout:30s} median {statistics.median(ms):6.2f} ms  (min {min(ms):.2f}, max {max(ms):.2f})")
    print("  the same packages and parts everywhere:", all(len(s) == 1 for s in seen.values()))


if __name__ == "__main__":
    main()
