"""Output replay: a rule cell whose value is reused shows what it showed when it ran, in order."""
from __future__ import annotations

import sys

import pytest
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell

from shells import fresh_shell

from nbbuild.notebook.replay import LIMIT


class Screen:
    """What the user sees, in order: stream text and displays on one list (as a notebook would)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def take(self) -> list[tuple]:
        out, self.events = self.events, []
        return out


class _Stream:
    def __init__(self, screen: Screen, name: str):
        self.screen, self.name = screen, name

    def write(self, text: str) -> int:
        ev = self.screen.events
        if ev and ev[-1][0] == self.name:
            ev[-1] = (self.name, ev[-1][1] + text)
        else:
            ev.append((self.name, text))
        return len(text)

    def flush(self) -> None:
        pass


class _Publisher(DisplayPublisher):
    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
        self.screen.events.append(("update" if update else "display", data, transient))

    def clear_output(self, wait=False):
        self.screen.events.append(("clear", wait))


@pytest.fixture
def ip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the screen: the cells' outputs, without the progress line that a build slower than its delay
    # draws on stderr (any build, on a busy machine: a fresh-clone run saw one in a reused cell)
    monkeypatch.setenv("NBBUILD_PROGRESS", "0")
    screen = Screen()
    shell = fresh_shell()
    pub = _Publisher(shell=shell)
    pub.screen = screen
    shell.display_pub = pub
    shell.displayhook.write_output_prompt = lambda: None
    run_cell = shell.run_cell

    def on_screen(*args, **kwargs):   # pytest puts its own streams back between phases
        with monkeypatch.context() as m:
            m.setattr(sys, "stdout", _Stream(screen, "stdout"))
            m.setattr(sys, "stderr", _Stream(screen, "stderr"))
            return run_cell(*args, **kwargs)

    monkeypatch.setattr(shell, "run_cell", on_screen)
    shell.run_line_magic("load_ext", "nbbuild")
    shell.run_cell("from probe import Calls; calls = Calls()")
    shell.screen = screen
    yield shell
    shell._nbbuild_state.build.close()
    shell.run_line_magic("unload_ext", "nbbuild")
    InteractiveShell.clear_instance()


def _shown(events: list[tuple]) -> list[tuple]:
    """The rules' own output: without the build summary line and the displayhook's result."""
    out = []
    for e in events:
        if e[0] == "stdout":
            text = "".join(line for line in e[1].splitlines(True) if not line.startswith("ran "))
            e = (e[0], text)
        out.append(e)
    return out


SHOWS = """%%rule
calls.append("shows")
from IPython.display import HTML, display
print("loading")
display(HTML("<b>table</b>"))
print("warning: 2 rows dropped", file=sys.stderr)
print("done")
shows = 42
"""


def test_a_reused_rule_cell_shows_its_stdout_stderr_and_displays_again_in_order(ip):
    ip.run_cell("import sys")
    ip.run_cell(SHOWS)
    first = ip.screen.take()
    assert [e[0] for e in first] == ["stdout", "display", "stderr", "stdout"]
    assert first[1][1]["text/html"] == "<b>table</b>"
    ip.run_cell(SHOWS)
    assert ip.screen.take() == first
    assert ip.user_ns["calls"] == ["shows"] and ip.user_ns["shows"] == 42


def test_build_replays_the_targets_reused_not_their_dependencies_nor_what_ran(ip):
    """raw runs as a cell of its own here: its output is not part of total's."""
    ip.run_cell("%%rule\ncalls.append('raw')\nprint('raw says')\nraw = [1, 2]")
    ip.run_cell("%%rule\ncalls.append('total')\nprint('total says')\ntotal = sum(raw)")
    ip.screen.take()
    ip.run_cell("%build total")
    assert _shown(ip.screen.take()) == [("stdout", "total says\n")]
    ip.run_cell("%build total --force")
    assert _shown(ip.screen.take()) == [("stdout", "total says\n")]   # ran live, not shown twice
    assert ip.user_ns["calls"] == ["raw", "total", "total"]


def test_a_dependency_run_inside_a_target_shows_in_its_record_and_keeps_its_own(ip):
    ip.run_cell("%%rule --lazy\ncalls.append('raw')\nprint('raw says')\nraw = [1, 2]")
    ip.run_cell("%%rule\ncalls.append('total')\nprint('total says')\ntotal = sum(raw)")
    assert _shown(ip.screen.take()) == [("stdout", "raw says\ntotal says\n")]
    ip.run_cell("%build total")                  # as the cell showed it when it ran
    assert _shown(ip.screen.take()) == [("stdout", "raw says\ntotal says\n")]
    ip.run_cell("%build raw")
    assert _shown(ip.screen.take()) == [("stdout", "raw says\n")]
    assert ip.user_ns["calls"] == ["raw", "total"]


def test_the_last_expression_is_the_cells_result_again(ip):
    ip.run_cell("%%rule\nprint('computing')\nx = 6\nx * 7")
    ip.screen.take()
    result = ip.run_cell("%%rule\nprint('computing')\nx = 6\nx * 7")
    assert result.result == 42
    assert ip.screen.take()[0] == ("stdout", "computing\n42\n")


def test_output_alone_does_not_make_dependents_stale(ip):
    ip.run_cell("import time")
    ip.run_cell("%%rule\ncalls.append('raw')\nprint('loaded at', time.perf_counter())\nraw = [1, 2]")
    ip.run_cell("%%rule\ncalls.append('total')\ntotal = sum(raw)")
    ip.run_cell("%build raw --force")
    ip.run_cell("%build total")
    assert ip.user_ns["calls"] == ["raw", "total", "raw"]


def test_clear_output_and_updated_displays_replay_in_their_final_state(ip):
    cell = """%%rule
from IPython.display import clear_output, display
print("step 1")
clear_output()
print("step 2")
h = display("working", display_id="progress")
h.update("finished")
progress = 1
"""
    ip.run_cell(cell)
    ip.screen.take()
    ip.run_cell(cell)
    shown = ip.screen.take()
    assert shown[0] == ("stdout", "step 2\n")
    assert shown[1][0] == "display" and shown[1][1]["text/plain"] == "'finished'"
    assert shown[1][2] is None     # the display id of the first run is not reused
    assert len(shown) == 2


def test_an_output_that_cannot_be_kept_is_replaced_by_a_note_and_the_value_works(ip):
    cell = """%%rule
from IPython.display import display
print("before")
display({"application/vnd.jupyter.widget-view+json": {"model_id": "abc"}, "text/plain": "W"}, raw=True)
display({"text/plain": "big"}, raw=True, metadata={"x": object()})
value = 7
"""
    ip.run_cell(cell)
    ip.screen.take()
    ip.run_cell(cell)
    shown = ip.screen.take()
    assert shown[0] == ("stdout", "before\n")
    assert shown[1][0] == "stderr" and "not replayed: a widget" in shown[1][1]
    assert "not plain JSON" in shown[1][1]
    assert ip.user_ns["value"] == 7


def test_output_beyond_the_limit_is_noted_not_kept(ip, monkeypatch):
    monkeypatch.setattr("nbbuild.notebook.replay.LIMIT", 100)
    cell = "%%rule\nprint('a' * 60)\nprint('b' * 60)\nbig = 1"
    ip.run_cell(cell)
    ip.screen.take()
    ip.run_cell(cell)
    shown = ip.screen.take()
    assert shown[0] == ("stdout", "a" * 60 + "\n")
    assert "not replayed: an output of 60 bytes" in shown[1][1]
    assert LIMIT >= 16 << 20


def test_an_inline_matplotlib_figure_is_drawn_inside_the_rule_and_replayed(ip):
    ip.enable_gui = lambda gui=None: None    # a plain InteractiveShell has no event loops
    ip.run_line_magic("matplotlib", "inline")
    cell = """%%rule
import matplotlib.pyplot as plt
calls.append("plot")
fig = plt.figure(figsize=(2, 2))
plt.plot([1, 3, 2])
print("plotted")
"""
    ip.run_cell(cell)
    first = [e for e in ip.screen.take() if e[0] == "display"]
    assert len(first) == 1 and "image/png" in first[0][1]
    ip.run_cell(cell)
    again = ip.screen.take()
    assert again[0] == ("stdout", "plotted\n")
    assert [e for e in again if e[0] == "display"] == first
    assert ip.user_ns["calls"] == ["plot"]


def test_a_failing_rule_records_nothing_and_runs_again(ip):
    ip.run_cell("flag = True")
    cell = "%%rule\ncalls.append('f')\nprint('trying')\nif flag: raise ValueError('no')\nf = 1"
    ip.run_cell(cell)
    ip.run_cell("flag = False")
    ip.run_cell(cell)
    ip.screen.take()
    ip.run_cell(cell)
    assert _shown(ip.screen.take())[0] == ("stdout", "trying\n")
    assert ip.user_ns["calls"] == ["f", "f"]


def test_the_streams_and_publisher_are_put_back_after_a_build(ip):
    publish = ip.display_pub.publish
    ip.run_cell("%%rule\nimport sys\nprint('x')\nx = 1\ninside = type(sys.stdout).__name__")
    ip.run_cell("after = type(sys.stdout).__name__")
    assert ip.user_ns["inside"] == "_Tee" and ip.user_ns["after"] == "_Stream"
    assert ip.display_pub.publish == publish
    assert "publish" not in ip.display_pub.__dict__


KERNEL = r'''
import io, json, os, sys
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
os.chdir(sys.argv[1])
events, out = [], sys.stdout

class Stream(io.StringIO):
    def __init__(self, name): super().__init__(); self.name = name
    def write(self, text):
        if events and events[-1][0] == self.name: events[-1][1] += text
        else: events.append([self.name, text])
        return len(text)

class Publisher(DisplayPublisher):
    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kw):
        events.append(["display", data])

ip = InteractiveShell.instance()
ip.display_pub = Publisher(shell=ip)
ip.enable_gui = lambda gui=None: None
sys.stdout, sys.stderr = Stream("stdout"), Stream("stderr")
ip.run_cell("%load_ext nbbuild")
ip.run_cell("%matplotlib inline")
sys.path.insert(0, sys.argv[3])
ip.run_cell("from probe import Calls; calls = Calls()")
for cell in json.loads(sys.argv[2]):
    ip.run_cell(cell)
out.write(json.dumps({"calls": ip.user_ns["calls"], "events": events}) + "\n")
'''

FRAME = """%%rule
import pandas as pd, matplotlib.pyplot as plt
calls.append("frame")
frame = pd.DataFrame({"a": [1, 2], "b": [3.5, 4.5]})
display(frame)
frame.plot()
print("rows:", len(frame))
"""


def test_after_a_restart_the_same_cells_replay_the_same_outputs(tmp_path):
    import json
    import os
    import subprocess

    cells = json.dumps(["import sys", SHOWS, FRAME])
    quiet = dict(os.environ, NBBUILD_PROGRESS="0")   # the screen: the cells' outputs, without the progress
    first, second = (json.loads(subprocess.run([sys.executable, "-c", KERNEL, str(tmp_path), cells, os.path.dirname(__file__)], env=quiet,
                                               capture_output=True, text=True, check=True).stdout)
                     for _ in range(2))                # line a slow first run draws
    assert first["calls"] == ["shows", "frame"] and second["calls"] == []
    kinds = [e[0] for e in first["events"]]
    assert kinds == ["stdout", "display", "stderr", "stdout", "display", "stdout", "display"]
    assert "text/html" in first["events"][4][1] and "image/png" in first["events"][6][1]
    assert second["events"] == first["events"]


def test_a_parametric_call_shows_its_output_inside_the_calling_cell_again(ip):
    ip.run_cell("%%rule model(alpha)\ncalls.append(alpha)\nprint('fitting', alpha)\nmodel = alpha * 2")
    cell = "%%rule\nprint('comparing')\nbest = max(model(a) for a in (1, 2))"
    ip.run_cell(cell)
    first = _shown(ip.screen.take())
    assert first == [("stdout", "comparing\nfitting 1\nfitting 2\n")]
    ip.run_cell(cell)
    assert _shown(ip.screen.take()) == first
    ip.run_cell("model(2)")                     # a call in a plain cell replays too
    assert _shown(ip.screen.take())[0] == ("stdout", "fitting 2\n4\n")
    assert ip.user_ns["calls"] == [1, 2]


def _seen(events: list[tuple]) -> list[tuple]:
    """stdout and displays (a figure as its kind), without the progress line on stderr."""
    return [(e[0], e[1] if e[0] == "stdout" else "figure" if "image/png" in e[1] else e[1])
            for e in events if e[0] != "stderr"]


def test_the_result_is_formatted_before_the_figures_are_drawn_as_in_plain_execution(ip):
    ip.enable_gui = lambda gui=None: None
    ip.run_line_magic("matplotlib", "inline")
    cell = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\nax.set_xlabel('x')"
    ip.run_cell(cell)
    plain = _seen(ip.screen.take())
    assert plain == [("stdout", "Text(0.5, 0, 'x')\n"), ("display", "figure")]   # drawing moves the label
    ip.run_cell("%%rule\n" + cell)
    assert _seen(ip.screen.take()) == plain
    ip.run_cell("%%rule\n" + cell)                          # reused: the result as it was formatted
    assert _seen(ip.screen.take()) == plain
    assert repr(ip.user_ns["_"]) != "Text(0.5, 0, 'x')"    # the value itself, drawn since
