"""notebooks/quickstart.ipynb, executed as a reader would run it: twice, each time in a fresh kernel,
in a temporary copy of the notebook whose store (`.nbbuild/` next to it) the second execution
inherits from the first.

- No cell fails: nbclient raises for a cell that raises, and a magic's one-line `UsageError` (which
  nbclient does not count as an error) fails here too.
- The first execution runs every rule body; the second runs none. Both are read from what the
  notebook itself does, not from nbbuild's report alone: the quickstart's slow rule bodies sleep
  (`raw` 1 s, each `model(...)` 0.5 s), so a cell that ran one takes at least that long, and a
  cell that restored it takes a few milliseconds. And the `%build` summary lines and the
  session totals of `%nbbuild metrics` say `ran N`: exactly what ran the first time, `ran 0` the
  second.
- A rule cell shows the same outputs, in the same order, whether its body ran or was restored.
"""
from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from outputs import merged, printed

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"
TIMEOUT = 120
SUMMARY = re.compile(r"^ran (\d+), reused (\d+), failed (\d+) in .*$", re.MULTILINE)
SESSION = re.compile(r"^session\s+\d+ builds?: ran (\d+), reused (\d+), failed (\d+)", re.MULTILINE)
TIMED = re.compile(r"^(CPU times|Wall time):.*\n?", re.MULTILINE)       # %%time's own lines vary


@pytest.fixture(scope="module")
def executions(tmp_path_factory, execute_notebook):
    """The quickstart executed twice in one temporary folder, each time in a fresh kernel."""
    directory = tmp_path_factory.mktemp("quickstart")
    shutil.copy(NOTEBOOK, directory / NOTEBOOK.name)
    done = [execute_notebook(nbformat.read(directory / NOTEBOOK.name, as_version=4), directory) for _ in range(2)]
    assert (directory / ".nbbuild").is_dir()    # the store: `.nbbuild/` next to the notebook
    return done


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def cell(nb, first_line: str, nth: int = 0):
    """The nth code cell whose first line is `first_line`; with `first_line` ending in "…", whose
    source starts with it."""
    if first_line.endswith("…"):
        found = [c for c in code_cells(nb) if c.source.startswith(first_line[:-1])]
    else:
        found = [c for c in code_cells(nb) if c.source.splitlines()[0] == first_line]
    return found[nth]


def stdout(c) -> str:
    """What the cell printed, build views' lines included (outputs.printed)."""
    return printed(c.outputs)


def seconds(c) -> float:
    """How long the cell took, from nbclient's timing record."""
    t = c.metadata["execution"]
    return (_when(t["shell.execute_reply"]) - _when(t["iopub.execute_input"])).total_seconds()


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def summaries(c) -> list[tuple[int, int, int]]:
    return [tuple(map(int, m)) for m in SUMMARY.findall(stdout(c))]


def shown(c) -> list[tuple]:
    """What a cell shows: consecutive stream outputs of one name as one text (how the kernel splits
    them into messages is timing), without the lines that differ from run to run by design: the
    build summary, %%time's timings, and the "stale:" hint (not given when the store already
    holds what the edit asks for)."""
    out = merged(c.outputs)
    kept = []
    for e in out:
        if e[0] == "build view":
            continue
        if e[0] == "stream":
            text = "".join(line for line in e[2].splitlines(True)
                           if not (SUMMARY.match(line) or TIMED.match(line) or line.startswith("stale: ")))
            if not text:
                continue
            e = (e[0], e[1], text)
        kept.append(e)
    return kept


# the cells whose rule bodies sleep, and for how long (at least) when they run
SLOW = [("%%rule", 0, 1.0),                                          # raw
        ("%build clean", 0, 1.0),                                    # raw again: its file grew
        ("model(alpha=0.1)", 0, 0.5),
        ("model(alpha=0.1), model(alpha=1.0, l1=0.5)", 0, 0.5),      # the second call runs
        ("%build model(alpha=10.0)", 0, 0.5)]


def test_no_cell_fails_or_prints_a_usage_error(executions):
    for nb in executions:
        for c in code_cells(nb):
            assert not [o for o in c.outputs if o.output_type == "error"], c.source
            stderr = "".join(o.text for o in c.outputs if o.output_type == "stream" and o.name == "stderr")
            assert "UsageError" not in stderr and "Traceback" not in stderr, (c.source, stderr)


def test_the_first_execution_runs_every_rule_body(executions):
    first, _ = executions
    for line, nth, at_least in SLOW:
        assert seconds(cell(first, line, nth)) >= at_least, (line, nth)
    assert "loading sales" in stdout(cell(first, "%%rule", 0))
    assert "is stale" in stdout(cell(first, "%nbbuild why clean")) and "daily_sales.csv" in stdout(
        cell(first, "%nbbuild why clean"))
    assert "stale: clean — run %build clean" in stdout(cell(first, "threshold = 14.0"))
    builds = [summaries(c) for c in code_cells(first) if c.source.startswith("%build") and "--dry-run" not in c.source]
    assert builds == [[(2, 0, 0)], [(1, 1, 0)], [(1, 2, 0)]]       # raw and clean, clean, model(alpha=10.0)
    assert stdout(cell(first, "%build clean --dry-run")).startswith("would run: clean")
    # the session's totals count at least what the magics built: raw, clean, raw (edited), clean
    # twice, model(alpha=10.0) (the plain-cell calls of `model` are not counted there, yet)
    session = [tuple(map(int, m)) for m in SESSION.findall(stdout(cell(first, "%nbbuild metrics")))]
    assert session and session[0][0] >= 6 and session[0][2] == 0


def test_the_second_execution_runs_no_rule_body(executions):
    _, second = executions
    for line, nth, ran_for in SLOW:
        assert seconds(cell(second, line, nth)) < ran_for, (line, nth)
    builds = [summaries(c) for c in code_cells(second) if c.source.startswith("%build") and "--dry-run" not in c.source]
    assert [[s[0] for s in b] for b in builds] == [[0], [0], [0]]
    dry = stdout(cell(second, "%build clean --dry-run"))
    assert dry.strip() and not [line for line in dry.splitlines() if line.startswith("would run:")], dry
    session = [tuple(map(int, m)) for m in SESSION.findall(stdout(cell(second, "%nbbuild metrics")))]
    assert session and session[0][0] == 0 and session[0][2] == 0


def test_the_second_execution_restores_equal_values_and_replays_the_same_outputs(executions):
    first, second = executions
    compared = 0
    grown = cell(first, "%build clean")         # raw ran in it, as a dependency: shown live, once
    for a, b in zip(code_cells(first), code_cells(second)):
        assert a.source == b.source
        if a is grown:
            assert shown(a) == [("stream", "stdout", "loading sales ...\nloaded 9 rows\n")]
            assert shown(b) == []               # reused: a target replays its own outputs, not its dependencies'
        elif "%%rule" in a.source or a.source.startswith(("%build", "%%time", "model(", "clean")) and "--dry-run" not in a.source:
            assert shown(b) == shown(a), a.source
            compared += 1
    assert compared >= 9           # every rule cell, %%time, %build (but the one above) and model(...) cell
    assert "loading sales ...\nloaded 8 rows\n" in stdout(cell(second, "%%time"))   # replayed by %build raw


def test_status_and_why_after_both_executions(executions):
    for nb in executions:
        status = stdout(cell(nb, "%nbbuild status"))
        rows = [line for line in status.splitlines()[1:] if line.strip()]
        assert len(rows) == 5 and all("up to date" in row for row in rows), status
        why = stdout(cell(nb, "%nbbuild why model(alpha=0.1)"))
        assert "stale" in why and "threshold" in why, why


@pytest.mark.parametrize("name", ["quickstart.ipynb", "pipeline.ipynb"])
def test_run_all_in_jupyterlab_works_too(tmp_path, name, kernel_in):
    """JupyterLab sends each cell's id with its code (nbclient does not), and with cell ids a rule
    belongs to its cell: a notebook must not define one rule in two cells. Its cells are sent
    here as JupyterLab sends them, `cellId` in the request's metadata, to a real kernel."""
    nb = nbformat.read(NOTEBOOK.parent / name, as_version=4)
    with kernel_in(tmp_path) as (km, kc):
        for c in code_cells(nb):
            content = {"code": c.source, "silent": False, "store_history": True, "user_expressions": {},
                       "allow_stdin": False, "stop_on_error": True}
            msg = kc.session.msg("execute_request", content, metadata={"cellId": c.id})
            kc.shell_channel.send(msg)
            stderr, reply = "", None
            while reply is None:
                out = kc.get_iopub_msg(timeout=TIMEOUT)
                if out["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
                    continue
                if out["msg_type"] == "stream" and out["content"]["name"] == "stderr":
                    stderr += out["content"]["text"]
                elif out["msg_type"] == "status" and out["content"]["execution_state"] == "idle":
                    reply = kc.get_shell_msg(timeout=TIMEOUT)
            assert reply["content"]["status"] == "ok", (c.id, c.source, reply["content"])
            assert "UsageError" not in stderr, (c.id, c.source, stderr)
