"""Rule cells whose bodies run elsewhere (`%%rule NAME --executor processes|dask`, notebook/elsewhere.py),
in a real kernel: the notebook of test_kernel.py, its rule cells sent to a process pool or to a
Dask LocalCluster that the notebook itself starts (`--executor dask` takes that Client).

Each is executed twice, each time in a fresh kernel, and compared with the same notebook on
threads: the same rule bodies run (once: the second execution runs none), the same values are
bound, and every cell shows the same outputs in the same order — what a body printed, displayed
and plotted in its worker shows in its cell, and is replayed when reused. Figures are compared as
"a PNG" (the inline backend and a worker draw them at different resolutions).
"""
from __future__ import annotations

import base64
import re

import nbformat
import pytest
from test_kernel import CELLS, KERNELSPEC, RULE_CELLS, executed_twice_as, shown
from test_kernel import notebook as named_cells

pytest.importorskip("distributed")

CLUSTER = ("from dask.distributed import Client\n"
           "client = Client(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None)\n")
WHERE = "%%rule\nimport os\nwhere = os.getpid()\n"
RULE_LINE = re.compile(r"^%%rule\b(.*)$", re.M)


def notebook(executor: str | None) -> nbformat.NotebookNode:
    cells = dict(CELLS)
    if executor is not None:
        cells = {k: RULE_LINE.sub(lambda m: f"%%rule{m.group(1)} --executor {executor}", v, count=1)
                 for k, v in cells.items()}
        cells["where"] = RULE_LINE.sub(f"%%rule --executor {executor}", WHERE)
        cells["elsewhere"] = "import os\nprint(where != os.getpid())"
    if executor == "dask":
        cells = {"load": cells.pop("load"), "cluster": CLUSTER, **cells, "close": "client.close()"}
    return named_cells(cells)


@pytest.fixture(scope="module")
def on_threads(executed_twice):
    return executed_twice_as(executed_twice, notebook(None))     # test_kernel.py's: made once


@pytest.fixture(scope="module", params=["processes", "dask"])
def elsewhere(request, executed_twice):
    return request.param, executed_twice_as(executed_twice, notebook(request.param))


def as_seen(outputs: list) -> list[tuple]:
    """shown(), with each PNG as the word "png" once it is checked to be one."""
    seen = []
    for e in shown(outputs):
        if e[0] in ("display_data", "execute_result") and "image/png" in e[1]:
            assert base64.b64decode(e[1]["image/png"]).startswith(b"\x89PNG")
            e = (e[0], {**e[1], "image/png": "png"})
            e[1]["text/plain"] = re.sub(r"\d+x\d+", "WxH", e[1].get("text/plain", ""))
        seen.append(e)
    return seen


def test_the_bodies_ran_elsewhere(elsewhere):
    _, (first, second) = elsewhere
    assert shown(first.outputs["elsewhere"]) == [("stream", "stdout", "True\n")]


def test_the_same_bodies_run_once_as_on_threads(on_threads, elsewhere):
    _, (first, second) = elsewhere
    assert first.ran == on_threads[0].ran == ["raw", "clean", "plot", "model(2, 0.0)", "model(0.5, 0.0)"]
    assert second.ran == first.ran               # the second execution, in a fresh kernel, ran none


def test_the_same_values_are_bound(on_threads, elsewhere):
    _, runs = elsewhere
    for run in runs:
        assert shown(run.outputs["values"]) == shown(on_threads[0].outputs["values"])


def test_each_cell_shows_what_it_shows_on_threads_and_again_when_reused(on_threads, elsewhere):
    executor, runs = elsewhere
    for name in RULE_CELLS + ["call"]:
        expected = as_seen(on_threads[0].outputs[name])
        for i, run in enumerate(runs):
            assert as_seen(run.outputs[name]) == expected, (executor, i, name)


MAPPED = {
    "load": "%load_ext nbbuild",
    "cluster": CLUSTER,
    "raw": "%%rule\nraw = list(range(300_000))\n",
    "f": "%%rule f(i) --executor dask\nimport time\nprint('f', i, 'sees', len(raw))\ntime.sleep(0.1)\ni * 2\n",
    "out": "%%rule\nout = f.map(range(12))\nprint(out)\n",
    "records": "b = get_ipython()._nbbuild_state.build\n"
               "for t in [b.rules['f'].task(i) for i in range(12)]:\n    print(b.attachment(t))\n",
    "again": "%build out",
    "close": "client.close()",
}


def test_bodies_on_one_worker_at_once_each_record_their_own_output(tmp_path, execute_notebook):
    """Twelve bodies on two Dask workers, each waiting for the kernel (`raw`) and so seceding: each
    records only what it printed itself, and the calling cell shows each line once, also when
    it is replayed."""
    cells = [nbformat.v4.new_code_cell(source) for source in MAPPED.values()]
    nb = execute_notebook(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC}), tmp_path)
    outputs = dict(zip(MAPPED, (c.outputs for c in nb.cells)))
    lines = [f"f {i} sees 300000" for i in range(12)]
    records = [line for e in shown(outputs["records"]) for line in e[2].splitlines()]
    assert records == [f"('nbbuild-output-1', (('stream', 'stdout', '{line}\\n'),))" for line in lines]
    for cell in ("out", "again"):
        printed = [line for e in shown(outputs[cell]) if e[0] == "stream" for line in e[2].splitlines()]
        assert sorted(printed[:-1]) == sorted(lines) and printed[-1] == str(list(range(0, 24, 2))), cell
