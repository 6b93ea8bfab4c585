"""Cells in a real kernel (nbclient, Run All), per cell: cold (an empty store), warm (a kernel
restart on the store the cold run left: every rule cell reused) and plain (the same cells without
nbbuild), for issue 17 items 1, 2 and 5.

Three notebooks:
- `pipeline`: notebooks/pipeline.ipynb up to its Dask section (a cluster's start-up is not what is
  measured); its rule cells, cold against warm. Plain is the notebook as one would write it
  without nbbuild (`plain_pipeline`): `%%rule` lines dropped, the parametric rule `fit(alpha,
  degree=1)` a function returning its cell's last expression (called, as plain code calls it,
  once per call site: 11 fits where a build makes 10), nbbuild's magics dropped. Restore
  (pickle) is a hand-made restore, the floor of any tool that restores these cells by loading
  their values: each cell loads, with pickle (protocol 5, one file a cell, the page cache warm),
  the names the plain cell bound, and shows nothing (`restore_pipeline`).
- `small`: a generated notebook of N (default 200) small rule cells under `%nbbuild auto`, each
  reading the one before (numbers, a list, a small array); plain is the same cells without nbbuild;
  plain + pickle the plain cells each also pickling the names it bound to a file of its own
  (`saving`): the least a tool that keeps every cell's values adds.
- `work`: a generated notebook of M (default 30) cells under `%nbbuild auto` that each compute
  something (a 500x500 random matrix, 2 MB, and its largest singular value, read by the next
  cell): where the per-cell cost of `small` stands against cells that do work; plain and plain +
  pickle likewise.

Each cell's time is nbclient's record, from the kernel's execute_input to its execute_reply: the
cell as the user waits for it (the magic, analysis, verification, loading, binding, replaying
outputs, the build view). Runs are interleaved (cold, warm, plain, ...) and repeated; medians.

    .venv/bin/python benchmarks/bench_notebook.py [--cells 200] [--work-cells 30] [--repeat 3] [--markdown]
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import revision  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "notebooks" / "pipeline.ipynb"


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def seconds(cell) -> float:
    t = cell.metadata["execution"]
    return (_when(t["shell.execute_reply"]) - _when(t["iopub.execute_input"])).total_seconds()


def execute(nb, folder: Path, store: Path | None) -> list[float]:
    env = dict(os.environ, NBBUILD_VIEW="widget")
    env.pop("NBBUILD_DIR", None)
    if store is not None:
        env["NBBUILD_DIR"] = str(store)
    nb = nbformat.from_dict(nb)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
                   ).execute(env=env)
    return [seconds(c) for c in nb.cells if c.cell_type == "code"]


def pipeline_cells() -> tuple[nbformat.NotebookNode, list[int]]:
    """The notebook up to its Dask section, and the indexes (among code cells) of its rule cells
    that take no arguments (a parametric rule's cell only registers it)."""
    nb = nbformat.read(str(PIPELINE), as_version=4)
    cut = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "dask.distributed" in c.source)
    nb.cells = nb.cells[:cut]
    code = [c for c in nb.cells if c.cell_type == "code"]
    rules = [i for i, c in enumerate(code) if c.source.startswith("%%rule") and "(" not in c.source.splitlines()[0]]
    return nb, rules


def _as_function(signature: str, body: str) -> str:
    """A parametric rule's cell as a plain function: its last expression is what it returns."""
    tree = ast.parse(body)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        tree.body[-1] = ast.Return(tree.body[-1].value)
    fn = ast.parse(f"def {signature}:\n    pass").body[0]
    fn.body = tree.body     # type: ignore[attr-defined]
    return ast.unparse(ast.fix_missing_locations(fn))


def plain_pipeline() -> tuple[nbformat.NotebookNode, list[int]]:
    """pipeline_cells() as written without nbbuild, and the indexes (among code cells) of the
    cells that were its timed rule cells."""
    nb, rules = pipeline_cells()
    code = [c for c in nb.cells if c.cell_type == "code"]
    keep, timed = [], []
    for i, c in enumerate(code):
        first, _, body = c.source.partition("\n")
        if first.startswith("%%rule"):
            call = re.fullmatch(r"%%rule\s+(\w+\(.*\))\s*", first)
            source = _as_function(call.group(1), body) if call else body
        elif c.source.lstrip().startswith(("%load_ext nbbuild", "%build", "%nbbuild")):
            continue
        else:
            source = c.source
        if i in rules:
            timed.append(len(keep))
        keep.append(nbformat.v4.new_code_cell(source))
    return nbformat.v4.new_notebook(cells=keep), timed


def _bound(source: str) -> list[str]:
    """Names a cell binds at its top level (assignments, loops, with ... as)."""
    names: list[str] = []
    for node in ast.parse(source).body:
        targets = (node.targets if isinstance(node, ast.Assign) else [node.target]
                   if isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For)) else
                   [i.optional_vars for i in node.items if i.optional_vars] if isinstance(node, ast.With) else [])
        for t in targets:
            names += [n.id for n in ast.walk(t) if isinstance(n, ast.Name) and n.id not in names]
    return names


def _dump(path: Path, names: list[str]) -> str:
    """Code that pickles (protocol 5) the named globals into `path`, as a dict by name."""
    return (f"import pickle as _p\nwith open({str(path)!r}, 'wb') as _f:\n"
            f"    _p.dump({{_n: globals()[_n] for _n in {names!r}}}, _f, protocol=5)")


def restore_pipeline(folder: Path) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode, list[int]]:
    """A hand-made restore of the pipeline, the floor of any tool that restores its cells by
    loading their values: (`save`: the plain pipeline, each timed cell followed by one that pickles
    (protocol 5) the names it bound to a file; `load`: the plain pipeline's set-up cells, then one
    cell a timed cell that loads them back, nothing shown; the indexes of those cells)."""
    plain, timed = plain_pipeline()
    save, load, loading = [], [], []
    for i, c in enumerate(plain.cells):
        save.append(c)
        if i in timed:
            path = folder / f"restore-{i}.pkl"
            save.append(nbformat.v4.new_code_cell(_dump(path, _bound(c.source))))
            loading.append(len(load))
            load.append(nbformat.v4.new_code_cell(
                f"import pickle as _p\nwith open({str(path)!r}, 'rb') as _f:\n    globals().update(_p.load(_f))"))
        elif i < timed[0]:
            load.append(c)
    return nbformat.v4.new_notebook(cells=save), nbformat.v4.new_notebook(cells=load), loading


def small_cells(n: int, with_nbbuild: bool) -> nbformat.NotebookNode:
    cells = ["import numpy as np\nx0 = 0\nitems0 = []\na0 = np.zeros(8)"]
    for i in range(1, n):
        cells.append(f"x{i} = x{i - 1} + {i}\nitems{i} = items{i - 1} + [x{i}]\na{i} = a{i - 1} + {i}\nx{i}")
    head = ["%load_ext nbbuild", "%nbbuild auto"] if with_nbbuild else []
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in head + cells])


def saving(nb: nbformat.NotebookNode, folder: Path) -> nbformat.NotebookNode:
    """The plain notebook `nb`, each cell also doing the least a tool that keeps every cell's values
    must do: pickle (protocol 5) the names it bound into a file of its own (no analysis, no hash,
    no index, nothing shown), before the expression it ends with, which it still shows."""
    cells = []
    for i, c in enumerate(nb.cells):
        tree = ast.parse(c.source)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        save = _dump(folder / f"save-{i}.pkl", _bound(c.source))
        tree.body += ast.parse(save).body + ([last] if last is not None else [])
        cells.append(nbformat.v4.new_code_cell(ast.unparse(tree)))
    return nbformat.v4.new_notebook(cells=cells)


def work_cells(n: int, size: int, with_nbbuild: bool) -> nbformat.NotebookNode:
    cells = ["import numpy as np\nw0 = 0.0"]
    for i in range(1, n):
        cells.append(f"m{i} = np.random.default_rng({i}).standard_normal(({size}, {size}))\n"
                     f"w{i} = w{i - 1} + float(np.linalg.svd(m{i}, compute_uv=False)[0])\nw{i}")
    head = ["%load_ext nbbuild", "%nbbuild auto"] if with_nbbuild else []
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in head + cells])


def page_cache_ms(folder: Path, mb: int = 20, repeat: int = 7) -> tuple[float, float]:
    """Milliseconds (median) to write `mb` MB into a new file on this machine: (the files kept,
    so each write takes memory the page cache did not hold; the file before removed first, so
    each write reuses the memory it freed). What storing a cell's values costs here beyond
    pickling them: on a VM that hands freed memory back to its host the first is much slower."""
    data = os.urandom(mb << 20)
    times: dict[bool, list[float]] = {True: [], False: []}
    for keep in (True, False):
        for i in range(repeat):
            path = folder / f"page-cache-{keep}-{i}"
            if not keep and i:
                os.unlink(folder / f"page-cache-{keep}-{i - 1}")
            t = time.perf_counter()
            with open(path, "wb", buffering=0) as f:
                f.write(data)
            times[keep].append(time.perf_counter() - t)
    for path in folder.glob("page-cache-*"):
        path.unlink()
    return median_ms(times[True]), median_ms(times[False])


def median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--work-cells", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    pipeline, rules = pipeline_cells()
    plain_nb, plain_rules = plain_pipeline()
    small, plain_small = small_cells(args.cells, True), small_cells(args.cells, False)
    work, plain_work = work_cells(args.work_cells, 500, True), work_cells(args.work_cells, 500, False)
    found: dict[str, list[list[float]]] = {k: [] for k in ("pipeline cold", "pipeline warm", "pipeline plain",
                                                           "pipeline restore (pickle)", "small cold",
                                                           "small warm", "small plain", "small plain + pickle", "work cold",
                                                           "work warm", "work plain", "work plain + pickle")}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            store = folder / "store-pipeline"
            cells = execute(pipeline, folder, store)
            found["pipeline cold"].append([cells[i] for i in rules])
            cells = execute(pipeline, folder, store)
            found["pipeline warm"].append([cells[i] for i in rules])
            cells = execute(plain_nb, folder, None)
            found["pipeline plain"].append([cells[i] for i in plain_rules])
            save, load, loading = restore_pipeline(folder)
            execute(save, folder, None)
            cells = execute(load, folder, None)
            found["pipeline restore (pickle)"].append([cells[i] for i in loading])
            store = folder / "store-small"
            found["small cold"].append(execute(small, folder, store)[2:])
            found["small warm"].append(execute(small, folder, store)[2:])
            found["small plain"].append(execute(plain_small, folder, None))
            found["small plain + pickle"].append(execute(saving(plain_small, folder), folder, None))
            store = folder / "store-work"
            found["work cold"].append(execute(work, folder, store)[2:])
            found["work warm"].append(execute(work, folder, store)[2:])
            found["work plain"].append(execute(plain_work, folder, None))
            found["work plain + pickle"].append(execute(saving(plain_work, folder), folder, None))
    with tempfile.TemporaryDirectory() as tmp:
        fresh, reused = page_cache_ms(Path(tmp))
    print(f"# bench_notebook: {revision()}; {args.repeat} interleaved repeats, medians")
    rows = []
    for name, runs in found.items():
        per_cell = [statistics.median(run[i] for run in runs) for i in range(len(runs[0]))]
        total = statistics.median(sum(run) for run in runs)
        rows.append((name, len(per_cell), median_ms(per_cell), 1000 * max(per_cell), total))
    ratio = {r[0]: r[4] for r in rows}
    if args.markdown:
        print("| run | cells | median per cell | slowest cell | all cells |\n|---|---|---|---|---|")
        for name, n, med, worst, total in rows:
            print(f"| {name} | {n} | {med:.1f} ms | {worst:.0f} ms | {total:.2f} s |")
    else:
        for name, n, med, worst, total in rows:
            print(f"{name:14s} {n:4d} cells  median {med:7.1f} ms  slowest {worst:7.0f} ms  all {total:7.2f} s")
    print(f"pipeline warm / cold: 1/{ratio['pipeline cold'] / ratio['pipeline warm']:.0f} (goal ≤ 1/50)")
    print(f"pipeline restore (pickle) / cold: 1/{ratio['pipeline cold'] / ratio['pipeline restore (pickle)']:.0f}: "
          "the floor of restoring these cells by loading their values")
    print(f"pipeline cold / plain: {ratio['pipeline cold'] / ratio['pipeline plain']:.2f}×; "
          f"pipeline warm / plain: {ratio['pipeline warm'] / ratio['pipeline plain']:.2f}×")
    print(f"this machine writes 20 MB into a new file in {fresh:.1f} ms (memory the page cache did not hold), "
          f"{reused:.1f} ms (memory a removed file freed)")
    print(f"small cold / plain: {ratio['small cold'] / ratio['small plain']:.2f}× (goal: overhead ≤ 5%)")
    print(f"small plain + pickle / plain: {ratio['small plain + pickle'] / ratio['small plain']:.2f}×: "
          "the least a tool that keeps every cell's values adds")
    print(f"small warm / plain: {ratio['small warm'] / ratio['small plain']:.2f}×")
    print(f"work plain + pickle / plain: {ratio['work plain + pickle'] / ratio['work plain']:.2f}×")
    print(f"work cold / plain: {ratio['work cold'] / ratio['work plain']:.2f}×; "
          f"work warm / plain: {ratio['work warm'] / ratio['work plain']:.2f}×")


if __name__ == "__main__":
    main()
