"""The widgets in a real kernel (nbclient + ipykernel): the build view's updates reach the front end
while the build runs, before the execute reply; the graph renders with `dot`, without it (the
Graphviz bundled in pygraphviz's wheel), and with neither (Mermaid)."""
from __future__ import annotations

import html
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import nbformat
import pytest
from nbclient import NotebookClient

from outputs import is_build_view, view

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

# a body that runs until the test has seen what it waits for: until the file `go` is in the
# kernel's folder (Recording makes it)
UNTIL_GO = ("import os, time\ndeadline = time.monotonic() + 60\n"
            "while not os.path.exists('go') and time.monotonic() < deadline:\n    time.sleep(0.01)\n")
SLOW = "%%rule slow --lazy\n" + UNTIL_GO + "slow = 1\n"


class Recording(NotebookClient):
    """An nbclient that notes when each widget update arrived (here and at the kernel) and when
    each cell's execute reply arrived; and makes the file `go` in `folder` once `go_when(updates)`
    holds."""

    def __init__(self, *args, folder: Path, go_when: Callable[[list], bool] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.updates: list[tuple[int, float, str, dict]] = []   # cell, arrival, kernel's date, state
        self.replies: dict[int, tuple[float, str]] = {}
        self.comms: list[tuple[int, str]] = []     # cell, message type: every comm message
        self.messages: list[tuple[int, str]] = []  # cell, message type: every message of a cell
        self.on_cell_executed = self._replied
        self.go, self.go_when = folder / "go", go_when

    def handle_comm_msg(self, outs, msg, cell_index):
        self.comms.append((cell_index, msg["msg_type"]))
        data = msg["content"].get("data", {})
        if msg["msg_type"] == "comm_msg" and data.get("method") == "update":
            self.updates.append((cell_index, time.monotonic(), msg["header"]["date"], data["state"]))
            if self.go_when is not None and not self.go.exists() and self.go_when(self.updates):
                self.go.touch()
        super().handle_comm_msg(outs, msg, cell_index)

    def process_message(self, msg, cell, cell_index):
        self.messages.append((cell_index, msg["msg_type"]))
        return super().process_message(msg, cell, cell_index)

    def _replied(self, cell, cell_index, execute_reply):
        self.replies[cell_index] = (time.monotonic(), execute_reply["header"]["date"])


def _date(stamp) -> datetime:
    return stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))


def run(tmp_path, cells: list[str], env: dict | None = None,
        go_when: Callable[[list], bool] | None = None) -> tuple[nbformat.NotebookNode, Recording]:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                  metadata={"kernelspec": KERNELSPEC})
    client = Recording(nb, timeout=90, shutdown_kernel="immediate",      # as conftest.SHUTDOWN
                       resources={"metadata": {"path": str(tmp_path)}}, folder=tmp_path, go_when=go_when)
    full = {**os.environ, "NBBUILD_DIR": str(tmp_path / "store"), **(env or {})}
    client.execute(env=full)
    return nb, client


def without_dot() -> str:
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if d and not os.path.exists(os.path.join(d, "dot")))


def running_lines(updates: list, cell: int) -> list:
    return [u for u in updates if u[0] == cell and "running <b>slow</b>" in str(u[3].get("value", ""))]


def spread(updates: list) -> float:
    return (_date(updates[-1][2]) - _date(updates[0][2])).total_seconds() if updates else 0.0


def test_the_build_views_updates_arrive_while_the_build_runs(tmp_path):
    build_cell = 2
    nb, client = run(tmp_path, ["%load_ext nbbuild", SLOW, "%build slow"],
                     go_when=lambda u: len(running_lines(u, build_cell)) >= 3 and spread(running_lines(u, build_cell)) >= 1.0)
    arrived, replied_date = client.replies[build_cell]
    updates = [u for u in client.updates if u[0] == build_cell]
    during = [u for u in updates if u[1] < arrived and _date(u[2]) < _date(replied_date)]
    running = running_lines(during, build_cell)
    # the body runs until three running lines a second apart or more have arrived here; the
    # view pushes a few times a second from its own thread
    assert len(running) >= 3, [u[3] for u in updates]
    assert spread(running) >= 1.0                            # spread over the run
    assert len(during) <= 60                                # throttled: not a message per tick per widget
    settled = [u for u in updates if "bar_style" in u[3]]
    assert settled and settled[-1][3]["bar_style"] == "success"
    outputs = nb.cells[build_cell].outputs
    assert len(outputs) == 1 and is_build_view(outputs[0])
    assert outputs[0]["data"]["text/plain"].startswith("ran 1, reused 0, failed 0 in ")   # settled line
    model = outputs[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert model in nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]


def test_a_live_graph_shows_the_running_task_in_the_build_view(tmp_path):
    nb, client = run(tmp_path, ["%load_ext nbbuild", SLOW, "%build slow --graph"],
                     go_when=lambda updates: any(u[0] == 2 and "nbbuild-running" in str(u[3].get("value", ""))
                                                 and "<svg" in str(u[3].get("value", "")) for u in updates))
    arrived, _ = client.replies[2]
    svgs = [html.unescape(u[3]["value"].partition("<svg")[2]) for u in client.updates  # as a browser reads it
            if u[0] == 2 and u[1] < arrived and "<svg" in str(u[3].get("value", ""))]
    assert any("nbbuild-running" in s for s in svgs[:-1]), "no graph was sent while the task ran"
    assert "nbbuild-up-to-date" in svgs[-1] and "nbbuild-running" not in svgs[-1]


def graph_output(nb) -> dict:
    outs = [o for o in nb.cells[-1].outputs if view(o) == "graph"]
    assert len(outs) == 1, nb.cells[-1].outputs
    assert not [o for o in nb.cells[-1].outputs if o.output_type == "stream"], nb.cells[-1].outputs
    return outs[0]["data"]


GRAPH = ["%load_ext nbbuild", "%%rule raw\nraw = [3, 1, 2]", "%%rule clean\nclean = sorted(raw)", "%nbbuild graph"]


def test_the_graph_renders_as_svg_with_dot(tmp_path):
    import shutil
    if shutil.which("dot") is None:
        if os.environ.get("CI"):
            pytest.fail("Graphviz's dot is missing: `make test` installs it (apt-get install graphviz)")
        pytest.skip("Graphviz's dot is not installed here (make test installs it)")
    import subprocess
    version = subprocess.run(["dot", "-V"], capture_output=True, text=True).stderr.split("version")[1].split()[0]
    nb, _ = run(tmp_path, GRAPH)
    data = graph_output(nb)
    head, _, svg = data["image/svg+xml"].partition("<svg")
    assert f"Generated by graphviz version {version}" in head     # laid out by that dot program
    assert ">raw</text>" in svg and ">clean</text>" in svg
    assert data["text/plain"].startswith("clean — up to date")


def test_with_dot_off_the_path_the_graph_still_renders_as_svg(tmp_path):
    nb, _ = run(tmp_path, GRAPH, env={"PATH": without_dot()})
    data = graph_output(nb)
    svg = data["image/svg+xml"]
    import pygraphviz
    assert f"Generated by graphviz version {pygraphviz.__graphviz_version__}" in svg   # the bundled Graphviz
    assert "<svg" in svg and ">raw</text>" in svg and ">clean</text>" in svg and 'class="edge"' in svg
    assert data["text/plain"].startswith("clean — up to date")


def test_with_no_graphviz_at_all_the_graph_is_mermaid(tmp_path):
    cells = GRAPH[:-1] + ["import sys\nsys.modules['pygraphviz'] = None   # as if its wheel were not there",
                          "%nbbuild graph"]
    nb, _ = run(tmp_path, cells, env={"PATH": without_dot()})
    data = graph_output(nb)
    assert set(data) == {"text/vnd.mermaid", "text/plain"}
    assert data["text/vnd.mermaid"].startswith("flowchart LR") and "raw" in data["text/vnd.mermaid"]


def test_a_quick_build_sends_no_widget_its_place_shows_the_settled_line(tmp_path):
    """A build over before the view's first tick was never seen running: no widget message at all
    (issue 17: a reused cell paid for three widgets it never showed live). Its view is displayed
    once, settled (HTML), when nothing was shown before; else its place is taken before the body's
    first output, and updated."""
    cells = ["%load_ext nbbuild", "%%rule raw\nraw = [3, 1, 2]", "%build raw --force",
             "%%rule talk\nprint('said')\ntalk = 1", "%build talk"]
    nb, client = run(tmp_path, cells)
    assert client.comms == []
    displays = [(c, t) for c, t in client.messages if t in ("display_data", "update_display_data")]
    assert displays == [(1, "display_data"), (2, "display_data"), (3, "display_data"), (3, "update_display_data"),
                        (4, "display_data")]
    assert [o.get("output_type") for o in nb.cells[3].outputs] == ["display_data", "stream"]
    assert is_build_view(nb.cells[3].outputs[0]) and nb.cells[3].outputs[0]["data"]["text/plain"].startswith("ran 1, ")
    assert nb.cells[4].outputs[0]["data"]["text/plain"].startswith("ran 0, reused 1, ")
    outputs = nb.cells[2].outputs
    assert len(outputs) == 1 and is_build_view(outputs[0])
    assert outputs[0]["data"]["text/plain"].startswith("ran 1, reused 0, failed 0 in ")
    shown = outputs[0]["data"]["text/html"]
    assert 'class="nbbuild-progress nbbuild-settled"><b>nbbuild</b> ran 1, reused 0, failed 0 in ' in shown
    assert "✔ ran</td><td>raw</td>" in shown
    assert "widgets" not in nb.metadata


def test_the_build_view_comes_before_what_the_rules_print(tmp_path):
    """Its place is taken when the build starts, even when the box only fills it a tick later."""
    cell = "%%rule talk\nprint('before')\n" + UNTIL_GO + "print('after')\ntalk = 1"
    nb, _ = run(tmp_path, ["%load_ext nbbuild", cell], go_when=lambda updates: any(u[0] == 1 for u in updates))
    outputs = nb.cells[1].outputs
    assert is_build_view(outputs[0]) and outputs[0]["data"]["text/plain"].startswith("ran 1, ")
    assert "".join(o["text"] for o in outputs[1:] if o["output_type"] == "stream") == "before\nafter\n"
