"""The kernel's side of the JupyterLab extension (nbbuild/notebook/lab.py): the messages its comm
sends and the requests it answers, driven through a real IPython shell with cell ids (as
JupyterLab sends them) and a comm that records what it is sent."""
from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from shells import fresh_shell

from nbbuild.notebook import lab as lab_side

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "nbbuild" / "labextension"


class Comm:
    """What the comm manager hands the target: `send`, `on_msg`, `on_close`."""

    def __init__(self):
        self.sent: list[dict] = []
        self.handler = None
        self.closed = None

    def send(self, data):
        self.sent.append(data)

    def on_msg(self, handler):
        self.handler = handler

    def on_close(self, handler):
        self.closed = handler

    def ask(self, **data) -> dict:
        """A request from the front end, and the kernel's reply to it."""
        self.handler({"content": {"data": dict(data, id=len(self.sent))}})
        return next(m for m in reversed(self.sent) if m["type"] == "reply")

    def states(self) -> dict[str, tuple[str, str]]:
        """The last states message: cell id -> (state, reason)."""
        last = next(m for m in reversed(self.sent) if m["type"] == "states")
        return {cid: (e["state"], e["reason"]) for cid, e in last["cells"].items()}


CELLS = {
    "params": "threshold = 5",
    "raw": "%%rule\ncalls.append('raw')\nraw = [3, 1, 8, 9]",
    "kept": "%%rule\ncalls.append('kept')\nkept = [x for x in raw if x > threshold]",
    "fit": "%%rule fit(alpha)\ncalls.append('fit')\nfit = sum(kept) * alpha",
    "calls": "scores = [fit(a) for a in range(5)]",
}


def make_shell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shell = fresh_shell()
    shell.run_line_magic("load_ext", "nbbuild")
    shell.run_cell("from probe import Calls; calls = Calls()")
    lab = lab_side.LabComm(shell, shell._nbbuild_state)
    for event in ("pre_run_cell", "post_run_cell"):
        shell.events.register(event, getattr(lab, event))
    return shell, lab


def close(shell):
    shell._nbbuild_state.build.close()
    shell.run_line_magic("unload_ext", "nbbuild")
    InteractiveShell.clear_instance()


def run(shell, cell_id: str, source: str | None = None):
    result = shell.run_cell(CELLS[cell_id] if source is None else source, cell_id=cell_id)
    assert result.success, result.error_in_exec or result.error_before_exec


@pytest.fixture
def ip(tmp_path, monkeypatch):
    shell, lab = make_shell(tmp_path, monkeypatch)
    yield shell, lab
    close(shell)


def run_all(shell):
    for cid in CELLS:
        run(shell, cid)


def test_nothing_is_sent_or_worked_out_until_a_front_end_opens_the_comm(ip, monkeypatch):
    shell, lab = ip
    monkeypatch.setattr(lab_side, "cell_states", lambda state: pytest.fail("worked out with no comm open"))
    run_all(shell)
    assert shell.user_ns["scores"] == [0, 17, 34, 51, 68]


def test_a_terminal_shell_registers_no_comm_target(ip):
    shell, _ = ip
    lab_side.load_ipython_extension(shell)      # no kernel here
    assert not hasattr(shell, "_nbbuild_lab")


def test_in_a_kernel_load_ext_registers_the_target_once_and_unload_ext_stops_the_messages(tmp_path, monkeypatch):
    registered = []

    class Manager:
        def register_target(self, name, handler):
            registered.append(name)

    import comm as comm_package
    monkeypatch.setattr(comm_package, "get_comm_manager", lambda: Manager())
    shell, _ = make_shell(tmp_path, monkeypatch)
    try:
        shell.kernel = object()          # what ipykernel's shell has
        for _ in range(2):
            shell.run_line_magic("reload_ext", "nbbuild")
        assert registered == ["nbbuild"]
        lab = shell._nbbuild_lab
        assert lab.post_run_cell in shell.events.callbacks["post_run_cell"]
        shell.run_line_magic("unload_ext", "nbbuild")
        assert lab.post_run_cell not in shell.events.callbacks["post_run_cell"]
    finally:
        del shell.kernel
        shell.run_line_magic("load_ext", "nbbuild")
        close(shell)


def test_opening_says_each_rule_cells_state_and_every_cell_run_says_it_again(ip):
    shell, lab = ip
    comm = Comm()
    lab.opened(comm, {"content": {"data": {"path": "nb.ipynb"}}})
    assert comm.sent == [{"type": "states", "cells": {}}]
    run_all(shell)
    assert comm.states() == {"raw": ("up to date", "up to date"), "kept": ("up to date", "up to date"),
                             "fit": ("up to date", "up to date")}
    last = comm.sent[-1]["cells"]
    assert last["fit"]["title"] == "fit ×5" and [t["task"] for t in last["fit"]["tasks"]][:2] == ["fit(0)", "fit(1)"]
    assert last["kept"]["title"] == "kept"
    run(shell, "params", "threshold = 2")
    assert comm.states() == {"raw": ("up to date", "up to date"), "kept": ("stale", "global threshold changed"),
                             "fit": ("stale", "fit(0): dependency kept is stale (global threshold changed)")}


def test_a_rule_cell_is_said_to_run_before_it_runs_and_a_failure_is_said_after(ip):
    shell, lab = ip
    comm = Comm()
    lab.opened(comm, {"content": {"data": {}}})
    run(shell, "raw")
    assert [m["type"] for m in comm.sent] == ["states", "running", "states"]
    assert comm.sent[1] == {"type": "running", "cell": "raw"}
    shell.run_cell("%%rule\nboom = 1 / 0", cell_id="boom")
    assert comm.states()["boom"][0] == "failed"


def test_a_build_line_says_which_cells_it_may_run_before_it_runs(ip):
    shell, lab = ip
    comm = Comm()
    lab.opened(comm, {"content": {"data": {}}})
    run_all(shell)
    run(shell, "params", "threshold = 2")
    sent = len(comm.sent)
    run(shell, "build", "%build kept")
    assert comm.sent[sent:-1] == [{"type": "running", "cell": "kept"}]
    assert comm.states()["kept"] == ("up to date", "up to date")
    sent = len(comm.sent)
    run(shell, "build", "%build kept --dry-run")
    assert [m["type"] for m in comm.sent[sent:]] == ["states"]


def test_the_graph_names_each_nodes_cell_and_expands_a_rules_calls(ip):
    shell, lab = ip
    comm = Comm()
    lab.opened(comm, {"content": {"data": {}}})
    run_all(shell)
    reply = comm.ask(request="graph")
    assert reply["svg"].startswith("<svg")
    nodes = {n["label"]: n for n in reply["nodes"].values()}
    assert sorted(nodes) == ["fit ×5", "kept", "raw"]
    assert (nodes["kept"]["cell"], nodes["fit ×5"]["cell"], nodes["fit ×5"]["group"]) == ("kept", "fit", "fit")
    opened = comm.ask(request="graph", expand=["fit"])
    assert sorted(n["label"] for n in opened["nodes"].values()) == \
        ["fit(0)", "fit(1)", "fit(2)", "fit(3)", "fit(4)", "kept", "raw"]
    assert "fit(4)" in opened["svg"] and "fit ×5" not in opened["svg"]


def test_why_build_and_value_go_through_the_build(ip):
    shell, lab = ip
    comm = Comm()
    lab.opened(comm, {"content": {"data": {}}})
    run_all(shell)
    run(shell, "params", "threshold = 2")
    kept = next(n for n in comm.ask(request="graph")["nodes"].values() if n["label"] == "kept")
    assert comm.ask(request="why", key=kept["key"])["text"] == "kept is stale: global threshold changed"
    shell.user_ns["calls"].clear()
    sent = len(comm.sent)
    assert comm.ask(request="build", key=kept["key"])["text"].startswith("ran 1, reused 1")
    assert shell.user_ns["calls"] == ["kept"]
    assert [m["type"] for m in comm.sent[sent:]] == ["running", "reply", "states"]
    assert comm.sent[sent]["cell"] == "kept"
    assert comm.states()["kept"] == ("up to date", "up to date")
    assert comm.ask(request="value", key=kept["key"])["text"] == "kept = [3, 8, 9]"
    fit1 = next(n for n in comm.ask(request="graph", expand=["fit"])["nodes"].values() if n["label"] == "fit(1)")
    assert comm.ask(request="value", key=fit1["key"])["text"] == "fit(1) is stale: build it to see its value"
    assert comm.ask(request="why", key="nothing/here")["error"] == "no rule for 'nothing/here' in this kernel"


def test_after_a_restart_the_states_come_back_from_the_store_without_running_anything(tmp_path, monkeypatch):
    shell, lab = make_shell(tmp_path, monkeypatch)
    lab.opened(Comm(), {"content": {"data": {"path": "nb.ipynb"}}})
    run_all(shell)
    run(shell, "params", "threshold = 2")
    close(shell)
    shell, lab = make_shell(tmp_path, monkeypatch)      # a new kernel on the same store
    try:
        comm = Comm()
        lab.opened(comm, {"content": {"data": {"path": "nb.ipynb"}}})
        cells = comm.sent[-1]["cells"]
        assert {cid: (e["state"], e["restored"]) for cid, e in cells.items()} == \
            {"raw": ("up to date", True), "kept": ("stale", True), "fit": ("stale", True)}
        assert shell.user_ns["calls"] == []
        deleted = Comm()      # the notebook without its cell fit: fit is forgotten
        lab.opened(deleted, {"content": {"data": {"path": "nb.ipynb", "cells": ["params", "raw", "kept"]}}})
        assert sorted(deleted.sent[-1]["cells"]) == ["kept", "raw"]
        run(shell, "params")
        run(shell, "raw")     # a cell run again says what it is now
        assert (comm.sent[-1]["cells"]["raw"].get("restored"), comm.sent[-1]["cells"]["kept"]["restored"]) == \
            (None, True)
    finally:
        close(shell)


def test_the_committed_build_of_the_extension_is_that_of_its_source():
    """nbbuild/labextension/ is built from labextension/ (`make labextension`), and says from which."""
    spec = importlib.util.spec_from_file_location("stamp", ROOT / "labextension" / "stamp.py")
    stamp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stamp)
    assert (BUILT / "source.sha256").read_text().strip() == stamp.fingerprint(), \
        "nbbuild/labextension/ is older than labextension/: run `make labextension` and commit the build"


def test_the_wheel_ships_the_prebuilt_extension_where_jupyter_looks(tmp_path):
    """The wheel (as hatchling builds it for `pip install`) puts the prebuilt extension, with its
    entry point and install.json, in share/jupyter/labextensions/nbbuild, where JupyterLab and
    Notebook 7 find it: `pip install` is all, no node."""
    from hatchling.builders.wheel import WheelBuilder
    wheel, = WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    data = "nbbuild-0.1.0.data/data/share/jupyter/labextensions/nbbuild/"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        package = json.loads(z.read(data + "package.json"))
        install = json.loads(z.read(data + "install.json"))
    assert package["name"] == "nbbuild"
    assert data + package["jupyterlab"]["_build"]["load"] in names, "its entry point"
    assert {data + "static/" + p.name for p in (BUILT / "static").iterdir()} <= names
    assert install["packageName"] == "nbbuild"
