"""Where a cell's milliseconds go in a real kernel: the notebooks of bench_notebook.py (cold, warm,
plain) run with a first cell that wraps nbbuild's phases (the magic, the build, the view, loading,
verifying, the store's per-build work...) in wall-clock timers, inside the kernel. Issue 17,
items 1 and 5: what bench_notebook.py measures from outside, taken apart.

The timers cost about a microsecond a call; a phase's time includes the phases it calls (the
build includes the view's events). `cell` is IPython's pre_execute to post_run_cell: the cell as
the kernel runs it, without the messages around it (nbclient's time, bench_notebook.py's, has them).

    .venv/bin/python benchmarks/bench_cell_phases.py small [--cells 200]   # ms per cell, all cells
    .venv/bin/python benchmarks/bench_cell_phases.py pipeline              # ms, cell by cell
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_notebook as bn  # noqa: E402
from common import revision  # noqa: E402

PHASES = [
    ("nbbuild.notebook.magics", "NbbuildMagics.rule"),
    ("nbbuild.notebook.building", "build"),
    ("nbbuild.build", "Build.build"),
    ("nbbuild.build", "Build._run"),
    ("nbbuild.engine.scheduler", "Scheduler.run"),
    ("nbbuild.engine.body", "execute"),
    ("nbbuild.engine.rebuild", "Rebuilder.start"),
    ("nbbuild.engine.rebuild", "Rebuilder.verify"),
    ("nbbuild.store.memory", "Memory.recall"),
    ("nbbuild.store.store", "Store.refresh"),
    ("nbbuild.store.store", "Store.end_build"),
    ("nbbuild.notebook.widgets", "BuildView.started"),
    ("nbbuild.notebook.widgets", "BuildView.finished"),
    ("nbbuild.notebook.state", "Replay.built"),
    ("nbbuild.notebook.state", "NotebookState.pre_run_cell"),
    ("nbbuild.notebook.state", "NotebookState.post_run_cell"),
    ("nbbuild.notebook.auto", "Auto.visit_Module"),
]

# the magics and the event hooks are bound when %load_ext registers them: wrapped before it
SETUP = r'''
import functools as _ft, importlib as _il, json as _j, time as _t
_acc, _cells, _last = {}, [], {}
def _wrap(modname, qual):
    owner, _, attr = qual.rpartition(".")
    obj = _il.import_module(modname)
    for part in filter(None, owner.split(".")):
        obj = getattr(obj, part)
    fn, key = getattr(obj, attr), qual
    @_ft.wraps(fn)
    def timed(*a, **k):
        t0 = _t.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            _acc[key] = _acc.get(key, 0.0) + _t.perf_counter() - t0
    setattr(obj, attr, timed)
for _m, _q in %r:
    _wrap(_m, _q)
_c0 = _t.perf_counter()
def _pre():
    global _c0
    _c0 = _t.perf_counter()
def _post(result=None):
    global _last
    _acc["cell"] = _acc.get("cell", 0.0) + _t.perf_counter() - _c0
    _cells.append({k: v - _last.get(k, 0.0) for k, v in _acc.items() if v - _last.get(k, 0.0) > 0})
    _last = dict(_acc)
get_ipython().events.register("pre_execute", _pre)
get_ipython().events.register("post_run_cell", _post)
'''
DUMP = '''# nbbuild: off
get_ipython().events.unregister("post_run_cell", _post)
open(%r, "w").write(_j.dumps(_cells[1:]))     # not this setup cell
'''


def run(nb: nbformat.NotebookNode, folder: Path, store: Path, out: Path, wrap: bool) -> list[dict[str, float]]:
    nb = nbformat.from_dict(nb)
    nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP % (PHASES if wrap else [])))
    nb.cells.append(nbformat.v4.new_code_cell(DUMP % str(out)))
    env = dict(os.environ, NBBUILD_VIEW="widget", NBBUILD_DIR=str(store))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
                   ).execute(env=env)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("notebook", choices=("small", "pipeline"))
    ap.add_argument("--cells", type=int, default=200)
    args = ap.parse_args()
    print(f"# bench_cell_phases: {revision()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.notebook == "small":
            runs = {"cold": bn.small_cells(args.cells, True), "warm": bn.small_cells(args.cells, True),
                    "plain": bn.small_cells(args.cells, False)}
        else:
            pipeline, rules = bn.pipeline_cells()
            runs = {"cold": pipeline, "warm": pipeline}
        for name, nb in runs.items():
            cells = run(nb, folder, folder / "store", folder / f"{name}.json", wrap=name != "plain")
            if args.notebook == "small":
                cells = cells[2:] if name != "plain" else cells      # not %load_ext, %nbbuild auto
                print(f"## {name}: ms per cell, mean over {len(cells)} cells")
                keys = sorted({k for c in cells for k in c}, key=lambda k: -sum(c.get(k, 0) for c in cells))
                for k in keys:
                    print(f"  {k:28s} {1000 * sum(c.get(k, 0.0) for c in cells) / len(cells):7.2f}")
            else:
                print(f"## {name}: ms, rule cells")
                code = [c for c in nb.cells if c.cell_type == "code"]
                for i in rules:
                    c = cells[i]
                    first = code[i].source.splitlines()[1][:30]
                    beyond = 1000 * (c.get("cell", 0.0) - c.get("Memory.recall", 0.0))   # item 1: the cell beyond its load
                    print(f"  {first:32s} beyond load {beyond:.1f}; " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in
                                                        sorted(c.items(), key=lambda kv: -kv[1]) if v >= 0.0003))


if __name__ == "__main__":
    main()
