"""nbbuild demo: notebooks/quickstart.ipynb executed headless twice, each time in a fresh kernel, the
second time against the store the first one left.

For each execution it prints every rule cell (the time it took, the rule it defines, and the lines
nbbuild itself printed there), every `%build` cell (its one-line summary) and every call of a
parametric rule, then the session's totals from `%nbbuild metrics` and the wall time. The first execution runs the rule bodies (the
quickstart's `raw` sleeps 1 s, each `model(...)` 0.5 s); the second restores everything: every
`%build` says `ran 0`.

Run: `make demo`, or `.venv/bin/python notebooks/run_demo.py [--store DIR]`. By default the store is
a temporary folder, removed at the end, so every demo starts from nothing; `--store DIR` keeps it
(`--store notebooks/.nbbuild` is where the notebook, opened in Jupyter, would find it).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

NOTEBOOK = Path(__file__).resolve().parent / "quickstart.ipynb"
TIMEOUT = 120
OWN_LINES = re.compile(r"^(ran \d+, reused \d+, failed \d+ in .*|stale: .*|would run: .*|nothing would run.*)$")
SESSION = re.compile(r"^session\s+(.*)$", re.MULTILINE)
CALL = re.compile(r"^([A-Za-z_]\w*)\(")
ASSIGNED = re.compile(r"^([A-Za-z_]\w*)\s*(?:,[^=]*)?=(?!=)", re.MULTILINE)


def seconds(cell) -> float:
    t = cell.metadata.get("execution", {})
    if "iopub.execute_input" not in t or "shell.execute_reply" not in t:
        return float("nan")
    return (_when(t["shell.execute_reply"]) - _when(t["iopub.execute_input"])).total_seconds()


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def stdout(cell) -> str:
    """What the cell printed, with the text form of nbbuild's displays (the build view's one line,
    the metrics) where they stand: what a terminal would show."""
    def text(o) -> str:
        if o.output_type == "stream":
            return o.text if o.name == "stdout" else ""
        if o.output_type == "display_data" and "nbbuild" in o.get("metadata", {}):
            return o.data.get("text/plain", "") + "\n"
        return ""
    return "".join(text(o) for o in cell.outputs)


def rule_name(source: str) -> tuple[str, str] | None:
    """(the rule a cell defines, what to show for it), for display: `%%rule NAME` or
    `%%rule NAME(params)`, else the first name the body assigns (nbbuild's default). None for a
    cell that is not a rule."""
    lines = source.splitlines()
    above = []
    while lines and lines[0].startswith("%%") and not lines[0].startswith("%%rule"):
        above.append(lines[0].split()[0])                   # %%time and friends on top
        lines = lines[1:]
    if not lines or not lines[0].startswith("%%rule"):
        return None
    line = lines[0][len("%%rule"):].strip()
    shown = ["%%rule"]
    if "(" in line:                                         # a parametric rule
        name = line.split("(")[0].strip()
        shown.append(line[: line.rindex(")") + 1])
    else:
        named = [w for w in line.split() if not w.startswith("-")]
        m = ASSIGNED.search("\n".join(lines[1:]))
        name = named[0] if named else (m.group(1) if m else "?")
        shown.append(name)
    return name, " ".join(above + shown)


def execute(store: str) -> tuple[nbformat.NotebookNode, float]:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = os.environ.copy()
    os.environ["NBBUILD_DIR"] = store          # the kernel inherits this process's environment
    try:
        start = time.perf_counter()
        client = NotebookClient(nb, timeout=TIMEOUT, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute(stderr=subprocess.DEVNULL)     # the kernel process's own log (its TCP warning)
        return nb, time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(env)


def report(title: str, nb: nbformat.NotebookNode, wall: float) -> None:
    print(f"\n== {title}")
    in_cells, parametric = 0.0, set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        took = seconds(cell)
        in_cells += 0.0 if math.isnan(took) else took
        first = cell.source.splitlines()[0] if cell.source else ""
        rule = rule_name(cell.source)
        own = [line for line in stdout(cell).splitlines() if OWN_LINES.match(line)]
        if rule is not None:
            what = rule[1]
            if "(" in what:
                parametric.add(rule[0])
                own = own or ["(parametric: built when called)"]
        elif first.startswith("%build"):
            what = first
        elif CALL.match(first) and CALL.match(first).group(1) in parametric:
            what = first                                    # a call of a parametric rule
        else:
            continue
        print(f"  [{cell.execution_count:>2}] {took:5.2f} s  {what:<44} {own[0] if own else ''}".rstrip())
        for line in own[1:]:
            print(f"  {'':4} {'':7}  {'':<44} {line}")
    metrics = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("%nbbuild metrics")]
    session = SESSION.search(stdout(metrics[0])) if metrics else None
    if session:
        print(f"  %nbbuild metrics, session: {session.group(1)}")
    print(f"  wall time {wall:.1f} s ({in_cells:.1f} s in cells, the rest starting the kernel)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="the store folder (default: a temporary one, removed at the end)")
    args = parser.parse_args()
    store = os.path.abspath(args.store) if args.store else tempfile.mkdtemp(prefix="nbbuild-demo-")
    print(f"nbbuild demo: {NOTEBOOK.name}, executed twice in fresh kernels; store {store}")
    warm = os.path.isdir(store) and bool(os.listdir(store))
    first = "the store as --store left it" if warm else "empty store"
    try:
        for title in (f"first execution: fresh kernel, {first}",
                      "second execution: fresh kernel, the store of the first"):
            nb, wall = execute(store)
            report(title, nb, wall)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        print(f"\nthe notebook failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.store:
            shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
