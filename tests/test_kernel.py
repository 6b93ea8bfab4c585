"""nbbuild in a real Jupyter kernel (ipykernel), driven the way a front end drives it.

1. A notebook with rule cells (one prints, one displays HTML, one draws an inline matplotlib
   figure), a parametric rule called from a plain cell and through `%build`, executed twice with
   nbclient, each time in a fresh kernel. The first execution runs every rule body once; the second
   runs none of them, binds equal values, and shows each rule cell's outputs again: the same
   outputs, in the same order, as when the bodies ran.
2. Interrupting the kernel during a build stops it cleanly: the interrupted rule is not stored
   (and its outputs are not bound), the dependency that finished before the interrupt is kept, and
   the next build works.

Run counts are read from a file each rule body appends a line to (a side effect of the body
itself, not nbbuild's own report), and asserted as lists.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from outputs import is_build_view, merged, printed
from waiting import wait_until

TIMEOUT = 60
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
SUMMARY = re.compile(r"^ran \d+, reused \d+, failed \d+ in .*\n?$")   # timings vary: not compared
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ran(directory: Path) -> list[str]:
    """The rule bodies that ran, in order: each appends its own line to ran.txt."""
    path = directory / "ran.txt"
    return path.read_text().splitlines() if path.exists() else []


RAN = '''\
def ran(what):
    with open("ran.txt", "a") as f:
        f.write(what + "\\n")
'''


# ---------------------------------------------------------------- 1. a notebook, executed twice

CELLS = {
    "load": "%load_ext nbbuild",
    "setup": RAN + "from IPython.display import HTML, display\nimport matplotlib.pyplot as plt\n",
    "raw": "%%rule\nran('raw')\nprint('loading raw')\nraw = [3, 1, -2, 5]\n",
    "clean": "%%rule\nran('clean')\nclean = sorted(v for v in raw if v >= 0)\n"
             "display(HTML(f'<b>{len(clean)} rows</b>'))\nlen(clean)\n",
    "plot": "%%rule\nran('plot')\nfig, ax = plt.subplots(figsize=(2, 2))\nax.plot(clean)\n"
            "print('plotted')\nplotted = len(clean)\n",
    "model": "%%rule model(alpha, l1=0.0)\nran(f'model({alpha}, {l1})')\nprint('fitting', alpha)\n"
             "score = sum(clean) * alpha + l1\nscore\n",
    "call": "doubled = model(alpha=2)",
    "build_model": "half = %build model(alpha=0.5)",
    "build": "%build plotted",
    "values": "print(repr((raw, clean, plotted, doubled, half)))",
}
RULE_CELLS = ["raw", "clean", "plot", "model", "build_model", "build"]   # what shows rule outputs


def notebook(sources: dict[str, str] = CELLS) -> nbformat.NotebookNode:
    """The cells, each named in its metadata."""
    cells = []
    for name, source in sources.items():
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["name"] = name
        cells.append(cell)
    return nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC})


@dataclass
class Execution:
    outputs: dict[str, list]     # cell name -> its outputs, as nbclient recorded them
    ran: list[str]               # ran.txt after this execution


def ran_and_stored(directory: Path) -> tuple[list[str], bool]:
    """ran.txt's lines, and whether the store is `.nbbuild` in the kernel's directory."""
    return ran(directory), (directory / ".nbbuild").is_dir()


def executed_twice_as(executed_twice, nb: nbformat.NotebookNode) -> list[Execution]:
    """The notebook executed twice in the same directory, each time in a fresh kernel (conftest)."""
    done = []
    for executed, (ran_so_far, stored) in executed_twice(nb, ran_and_stored):
        assert stored                          # the store: `.nbbuild` in the kernel's directory
        done.append(Execution({c.metadata["name"]: c.outputs for c in executed.cells}, ran_so_far))
    return done


@pytest.fixture(scope="module")
def executions(executed_twice) -> tuple[Execution, Execution]:
    first, second = executed_twice_as(executed_twice, notebook())
    return first, second


def shown(outputs: list) -> list[tuple]:
    """What a cell shows, as the user sees it: consecutive stream outputs of one name read as one
    text (how the kernel splits them into messages is timing), the build summary line left out
    (its timings vary), displays and results by their MIME data."""
    out = merged(outputs)
    cleaned = []
    for e in out:
        if e[0] == "build view":
            continue
        if e[0] == "stream":
            text = "".join(line for line in e[2].splitlines(True) if not SUMMARY.match(line))
            if not text:
                continue
            e = (e[0], e[1], text)
        cleaned.append(e)
    return cleaned


def test_the_first_execution_runs_each_rule_body_once(executions):
    first, _ = executions
    assert first.ran == ["raw", "clean", "plot", "model(2, 0.0)", "model(0.5, 0.0)"]


def test_a_second_execution_in_a_fresh_kernel_runs_no_rule_body(executions):
    first, second = executions
    assert second.ran == first.ran          # nothing appended by the second execution


def test_the_second_execution_binds_equal_values(executions):
    first, second = executions
    expected = [("stream", "stdout", "([3, 1, -2, 5], [1, 3, 5], 3, 18.0, 4.5)\n")]
    assert shown(first.outputs["values"]) == expected
    assert shown(second.outputs["values"]) == expected


def test_each_rule_cell_shows_the_same_outputs_in_the_same_order_when_replayed(executions):
    first, second = executions
    for name in RULE_CELLS:
        assert shown(second.outputs[name]) == shown(first.outputs[name]), name


def test_what_the_rule_cells_show(executions):
    """The outputs compared above are the rules' own: printed text, HTML, an inline figure."""
    first, _ = executions
    assert shown(first.outputs["raw"]) == [("stream", "stdout", "loading raw\n")]
    clean = shown(first.outputs["clean"])
    assert [e[0] for e in clean] == ["display_data", "execute_result"]
    assert clean[0][1]["text/html"] == "<b>3 rows</b>" and clean[1][1] == {"text/plain": "3"}
    plot = shown(first.outputs["plot"])
    assert [e[0] for e in plot] == ["stream", "display_data"]
    assert plot[0] == ("stream", "stdout", "plotted\n") and plot[1][1]["image/png"]
    assert shown(first.outputs["model"]) == []
    assert shown(first.outputs["build_model"]) == [("stream", "stdout", "fitting 0.5\n")]
    build = [e for e in shown(first.outputs["build"]) if e[0] == "display_data"]   # plot, reused
    assert build == [plot[1]]


def test_a_parametric_call_in_a_plain_cell_shows_its_output_again(executions):
    first, second = executions
    assert shown(first.outputs["call"]) == [("stream", "stdout", "fitting 2\n")]
    assert shown(second.outputs["call"]) == shown(first.outputs["call"])


def test_reusing_a_rule_that_made_a_figure_gives_no_changed_in_place_warning(executions):
    for execution in executions:
        for name, outputs in execution.outputs.items():
            for e in shown(outputs):
                assert not (e[0] == "stream" and "changed in place" in e[2]), (name, e)


# ---------------------------------------------------------------- 2. interrupting a build

def execute(kc, code: str, while_running=None) -> tuple[dict, list[dict]]:
    """Run `code`; (the execute reply's content, the iopub outputs as messages' contents with
    their msg_type). `while_running()` is called once the request is sent."""
    msg_id = kc.execute(code)
    if while_running is not None:
        while_running()
    outputs = []
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status" and content["execution_state"] == "idle":
            break
        if kind in ("stream", "display_data", "execute_result", "error"):
            outputs.append({"msg_type": kind, **content})
        elif kind == "update_display_data":     # as a front end does: the display is replaced
            shown_id = content.get("transient", {}).get("display_id")
            for i, o in enumerate(outputs):
                if o.get("transient", {}).get("display_id") == shown_id:
                    outputs[i] = {**o, "data": content["data"], "metadata": content["metadata"]}
    while True:
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], outputs


def stdout(outputs: list[dict]) -> str:
    """What the cell printed, build views' lines included (outputs.printed)."""
    return printed(outputs)


def plain(traceback: list[str]) -> str:
    """A traceback as text, without its colours."""
    return ANSI.sub("", "\n".join(traceback))


def ok(kc, code: str) -> str:
    reply, outputs = execute(kc, code)
    assert reply["status"] == "ok", (code, outputs)
    return stdout(outputs)


STATES = ("up to date", "never built", "not stored", "stale", "failed")


def states(kc) -> dict[str, str]:
    """`%nbbuild status` as {rule: state}, whichever layout it prints (a line or a table row a rule)."""
    found = {}
    for line in ok(kc, "%nbbuild status").splitlines():
        words = line.split()
        state = next((s for s in STATES if s in line), None)
        if words and state is not None:
            found[words[0].rstrip(":")] = state
    return found


SLOW = """%%rule slow --lazy
ran('slow')
total = sum(raw)
if slow_mode:
    open('started', 'w').close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
"""


@pytest.fixture
def kernel(tmp_path, kernel_in):
    with kernel_in(tmp_path) as (km, kc):
        ok(kc, "%load_ext nbbuild")
        ok(kc, RAN + "import time\nslow_mode = True")
        ok(kc, "%%rule --lazy\nran('raw')\nraw = [1, 2, 3]\n")
        ok(kc, SLOW)
        yield km, kc


def interrupted_build(km, kc, directory: Path) -> tuple[dict, list[dict]]:
    """`%build total`, interrupted once the slow rule's body has started."""
    def interrupt_once_started():
        wait_until(lambda: (directory / "started").exists() or not km.is_alive(), "the slow rule to start")
        assert km.is_alive(), "the kernel died before the slow rule started"
        km.interrupt_kernel()

    return execute(kc, "%build total", while_running=interrupt_once_started)


def test_interrupting_a_build_stops_it_and_says_so_in_one_line(kernel, tmp_path):
    """The cell fails (a "run all" stops there), shows where the rule was interrupted, and says
    in one line what became of the build."""
    km, kc = kernel
    start = time.monotonic()
    reply, outputs = interrupted_build(km, kc, tmp_path)
    assert time.monotonic() - start < 60          # stopped, not left to run its 120 s
    assert reply["status"] == "error"
    assert [o["msg_type"] for o in outputs] == ["display_data", "error", "stream"]
    assert is_build_view(outputs[0]) and outputs[0]["data"]["text/plain"] == "build stopped: interrupted"
    outputs = outputs[1:]
    assert outputs[0]["ename"] == "KeyboardInterrupt"
    assert "in slow()" in plain(outputs[0]["traceback"])    # the rule's own line is shown
    assert outputs[1]["name"] == "stderr" and outputs[1]["text"].startswith(
        "UsageError: build interrupted: nothing it was running was stored")
    assert ran(tmp_path) == ["raw", "slow"]


def test_after_an_interrupt_nothing_partial_is_stored_and_the_next_build_works(kernel, tmp_path):
    """The interrupted rule is never built (and nothing of it is bound); `raw`, which finished
    before the interrupt, is kept and does not run again."""
    km, kc = kernel
    interrupted_build(km, kc, tmp_path)
    assert states(kc) == {"raw": "up to date", "slow": "never built"}
    assert "never built" in ok(kc, "%nbbuild why total")
    assert ok(kc, "print('total' in dir())") == "False\n"       # nothing bound either
    ok(kc, "slow_mode = False")                                   # the slow rule made fast
    out = ok(kc, "%build total")
    assert re.fullmatch(r"ran 1, reused 1, failed 0 in .*\n", out)
    assert ok(kc, "print(total)") == "6\n"
    assert ran(tmp_path) == ["raw", "slow", "slow"]               # raw, built before the interrupt, kept
    assert states(kc) == {"raw": "up to date", "slow": "up to date"}
    assert ok(kc, "%build total").startswith("ran 0, ")           # and now it is stored
    assert ran(tmp_path) == ["raw", "slow", "slow"]


def test_an_interrupted_build_shows_no_engine_traceback(kernel, tmp_path):
    km, kc = kernel
    _, outputs = interrupted_build(km, kc, tmp_path)
    traceback = "".join(plain(o["traceback"]) for o in outputs if o["msg_type"] == "error")
    assert "nbbuild/" not in traceback and "engine/scheduler.py" not in traceback
