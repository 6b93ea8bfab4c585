"""The kernel's side of nbbuild's JupyterLab extension (labextension/): a comm that says, cell by
cell, whether each rule cell is up to date, and answers the side panel's questions.

Contract:
- `load_ipython_extension(shell)` (run by `%load_ext nbbuild`, after the magics) registers the comm
  target `nbbuild` in a Jupyter kernel, once per kernel; a terminal shell gets nothing.
  `unload_ipython_extension(shell)` (`%unload_ext nbbuild`) stops the messages after each cell. The front end
  opens the comm; until one does, nothing is sent and nothing is computed, so classic front ends,
  nbconvert and nbclient see no difference.
- Opening it (data: `path`, the notebook's path as the front end names it; `cells`, the ids of its
  cells) answers with a `states` message. After every cell the kernel runs, each open comm gets a
  fresh `states` message; before a rule cell runs, a `running` message naming it, and before a
  `%build` line, one for each cell whose rule it names or may run (Build.plan).
- `states`: `{"type": "states", "cells": {cell id: entry}}`, an entry `{"state", "reason", "title",
  "tasks"}`: `state` one of "up to date", "stale", "never built", "failed", "not stored" (as
  `Build.status` says, the most urgent among a parametric rule's calls), `reason` in words
  ("global threshold changed"), `title` how messages name the rule (`clean`, `fit ×14`). Entries
  of cells whose rules this kernel has not defined yet (after a restart) are those the last session
  left, kept in the store (`Build.keep_view_state`, one record per notebook), with `"restored": true`:
  badges come back without running anything.
- Requests from the front end (`{"request": ..., "id": n}`, answered `{"type": "reply", "id": n,
  ...}`): `graph` (`expand`: rule names whose calls are drawn one by one) -> `svg` and `nodes` (the
  SVG's node title -> `key`, `label`, `state`, `reason`, `cell`, `group`: the rule a collapsed node
  stands for); `why` (`key`) -> `text`; `build` (`key`) -> `text` (the report's line, or the error),
  then `states` (a `running` message for its cell before it); `value` (`key`) -> `text`: the names a cell rule bound as the notebook has them, or
  a call's value when it is up to date (nothing runs for it). Everything goes through the Build API.
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from ..engine.explain import Standing
from ..errors import NbbuildError
from .draw import render
from .graph import TITLES, collapse, label
from .lines import split_targets

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell
    from ..engine.task import Task
    from .state import NotebookState

__all__ = ["TARGET", "LabComm", "cell_states", "load_ipython_extension", "unload_ipython_extension"]

log = logging.getLogger("nbbuild")

TARGET = "nbbuild"
# the state a cell's badge takes when its tasks differ: the first of these any of them has
URGENCY = (Standing.FAILED, Standing.STALE, Standing.NEVER_BUILT, Standing.NOT_STORED, Standing.UP_TO_DATE)
_SAVED = "lab:"            # the view state per notebook: its cells' last states
_VALUE_CHARS = 2000


def cell_states(state: NotebookState) -> dict[str, dict[str, Any]]:
    """Cell id -> its rule's state, for every rule this kernel defined in a cell with an id."""
    b, found = state.build, {}
    for name, cell in list(state.cells.items()):
        rule = b.rules.get(name)
        if rule is None:
            continue
        parametric = name in state.parametric
        tasks = b.known_tasks(rule) if parametric else [rule.task()]
        statuses = b.statuses(tasks) if tasks else []
        rows = [{"task": label(s.task), "key": t.key, "state": s.state, "reason": label(s.reason)}
                for t, s in zip(tasks, statuses)]
        entry: dict[str, Any]
        if not rows:
            entry = {"state": Standing.NEVER_BUILT, "reason": f"{name} has not been called yet", "title": name}
        else:
            worst = min(rows, key=lambda r: URGENCY.index(r["state"]) if r["state"] in URGENCY else len(URGENCY))
            reason = worst["reason"] if worst["state"] != Standing.UP_TO_DATE else "up to date"
            if parametric and worst["state"] != Standing.UP_TO_DATE:
                reason = f"{worst['task']}: {reason}"
            title = f"{name} ×{len(rows)}" if parametric else TITLES.get(name, name)
            entry = {"state": worst["state"], "reason": reason, "title": title}
        entry["rule"] = name
        entry["tasks"] = rows
        found[cell] = entry
    return found


class LabComm:
    """The open comms of one kernel, and what they were told."""

    def __init__(self, shell: InteractiveShell, state: NotebookState):
        self.shell = shell
        self.state = state
        self.comms: list[Any] = []
        self.path: str | None = None
        self.saved: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ the comm

    def opened(self, comm: Any, msg: dict) -> None:
        """A front end opened the comm (comm target handler)."""
        data = msg.get("content", {}).get("data") or {}
        path = data.get("path")
        if isinstance(path, str) and path != self.path:
            self.path = path
            self.saved = self._load()
        present = data.get("cells")
        if isinstance(present, list):        # a cell deleted since is forgotten
            self.saved = {cid: e for cid, e in self.saved.items() if cid in present}
        self.comms.append(comm)
        comm.on_msg(self.received)
        comm.on_close(lambda _msg, c=comm: self.comms.remove(c) if c in self.comms else None)
        self.push()

    def send(self, data: dict) -> None:
        for comm in list(self.comms):
            try:
                comm.send(data)
            except Exception:  # a front end gone mid-send: it is dropped, the kernel goes on
                log.debug("nbbuild: a comm could not be sent to; dropped", exc_info=True)
                self.comms.remove(comm)

    def push(self) -> None:
        """Fresh states of every rule cell (and, restored, those of cells not run since the restart)."""
        try:
            states = cell_states(self.state)
        except Exception:  # a badge is never worth a failing cell
            log.warning("nbbuild: the cells' states could not be worked out", exc_info=True)
            return
        self._save(states)
        cells = {cid: dict(entry, restored=True) for cid, entry in self.saved.items() if cid not in states}
        cells.update(states)
        self.send({"type": "states", "cells": cells})

    # ------------------------------------------------------------ kernel events

    def pre_run_cell(self, info: Any = None) -> None:
        if not self.comms:
            return
        cid = getattr(info, "cell_id", None)
        source = (getattr(info, "raw_cell", None) or "").lstrip()
        if cid and (source.startswith("%%rule") or cid in self.state.cells.values()):
            self.send({"type": "running", "cell": cid})
        elif source.startswith("%build"):
            try:
                cells = self._built_cells(source.splitlines()[0][len("%build"):])
            except Exception:  # a line %build itself refuses: it says why, the badges stay
                cells = []
            for cell in cells:
                self.send({"type": "running", "cell": cell})

    def _built_cells(self, line: str) -> list[str]:
        """Cells of the rules a `%build` line names, and of those its build may run (Build.plan)."""
        state, words = self.state, split_targets(line)
        if "--dry-run" in words:
            return []
        rules, skip = [], False
        for w in words:
            if skip or w in ("-j", "--jobs"):
                skip = not skip
                continue
            if not w.startswith("-"):
                name = w.partition("(")[0]
                rule = state.versions.producer(name) or name
                if rule in state.build.rules:
                    rules.append(rule)
        tasks = [state.build.rules[r].task() for r in rules if r not in state.parametric]
        planned = [re.split(r"[(/]", text)[0] for text, _ in (state.build.plan(*tasks) if tasks else [])]
        return [c for c in dict.fromkeys(state.cells.get(r) for r in rules + planned) if c is not None]

    def post_run_cell(self, result: Any = None) -> None:
        if self.comms:
            self.push()

    # ------------------------------------------------------------ requests

    def received(self, msg: dict) -> None:
        data = msg.get("content", {}).get("data") or {}
        request, rid = data.get("request"), data.get("id")
        try:
            if request == "graph":
                reply = self.graph(data.get("expand") or [])
            elif request in ("why", "build", "value"):
                task = self._task(str(data.get("key", "")))
                reply = {"text": getattr(self, "_" + request)(task)}
            elif request == "states":
                self.push()
                return
            else:
                reply = {"error": f"unknown request {request!r}"}
        except NbbuildError as e:
            reply = {"error": label(str(e))}
        except Exception as e:  # the panel shows it; the kernel goes on
            log.warning("nbbuild: the lab request %r failed", request, exc_info=True)
            reply = {"error": f"{type(e).__name__}: {e}"}
        self.send(dict(reply, type="reply", id=rid, request=request))
        if request == "build":
            self.push()

    def graph(self, expand: list[str]) -> dict[str, Any]:
        """The notebook's task graph as SVG (draw.render), and what each of its nodes is."""
        expand = [str(e) for e in expand]
        g, _ = collapse(self.state.graph(), None, expand)
        mime, text = render(g, expand=expand)       # (its calls, expanded, would be collapsed again)
        nodes = {}
        for i, (nid, node) in enumerate(g.nodes.items()):
            if node.kind != "task":
                continue
            rule = nid[len("rule:"):] if nid.startswith("rule:") else nid.partition("/")[0]
            nodes[f"n{i}"] = {"key": nid, "label": node.label, "state": node.state, "reason": node.reason,
                              "cell": self.state.cells.get(rule), "rule": rule,
                              "group": rule if nid.startswith("rule:") else None}
        svg = text[text.find("<svg"):] if mime == "image/svg+xml" else None
        return {"svg": svg, "mermaid": None if svg else text, "nodes": nodes}

    def _task(self, key: str) -> Any:
        b = self.state.build
        rule = b.rules.get(key[len("rule:"):] if key.startswith("rule:") else key.partition("/")[0])
        if rule is None:
            raise NbbuildError(f"no rule for {key!r} in this kernel")
        if key.startswith("rule:"):
            raise NbbuildError(f"{rule.name} stands for several calls: expand it and pick one")
        for task in ([rule.task()] if rule.name not in self.state.parametric else b.known_tasks(rule)):
            if task.key == key:
                return task
        raise NbbuildError(f"no task {key!r} in this kernel")

    def _why(self, task: Task) -> str:
        return label(self.state.build.why(task))

    def _build(self, task: Task) -> str:
        """As `%build` does: build, then bind a cell rule's outputs into the namespace. Its cell's
        badge says `running` meanwhile."""
        state = self.state
        cell = state.cells.get(task.rule.name)
        if cell is not None:
            self.send({"type": "running", "cell": cell})
        values = state.build.build(task)
        if task.rule.name not in state.parametric:
            state.bind(values[0], task.rule.name)
        report = state.build.report
        return label(str(report)) if report is not None else "built"

    def _value(self, task: Task) -> str:
        state, name = self.state, task.rule.name
        if name not in state.parametric:
            ns = self.shell.user_ns
            shown = [f"{n} = {_short(ns[n])}" for n in state.outputs.get(name, ()) if n in ns]
            return "\n".join(shown) or f"{label(repr(task))} binds no names"
        st = state.build.status(task)
        if st.state != Standing.UP_TO_DATE:
            return f"{label(repr(task))} is {st.state}: build it to see its value"
        return _short(state.build.build(task)[0])     # up to date: loaded, nothing runs

    # ------------------------------------------------------------ kept in the store

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            saved = self.state.build.view_state(_SAVED + (self.path or ""))
        except Exception:  # a store that cannot be read: no badges until the cells run
            log.debug("nbbuild: the saved cell states could not be read", exc_info=True)
            saved = None
        return saved if isinstance(saved, dict) else {}

    def _save(self, states: dict[str, dict[str, Any]]) -> None:
        if self.path is None:
            return
        merged = dict(self.saved)
        merged.update({cid: {k: v for k, v in e.items() if k != "tasks"} for cid, e in states.items()})
        if merged != self.saved:
            self.saved = merged
            self.state.build.keep_view_state(_SAVED + self.path, merged)


def _short(value: Any) -> str:
    text = repr(value)
    text = re.sub(r"\s+\n", "\n", text)
    return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS] + " …"


def load_ipython_extension(shell: Any) -> None:
    """Register the comm target in a kernel (once: `%reload_ext` keeps the comms open)."""
    state = getattr(shell, "_nbbuild_state", None)
    if state is None or getattr(shell, "kernel", None) is None:
        return
    lab = getattr(shell, "_nbbuild_lab", None)
    if lab is None:
        try:
            from comm import get_comm_manager
            manager = get_comm_manager()
        except Exception:  # no comm machinery here: the notebook works without the extension
            log.debug("nbbuild: no comm manager; the JupyterLab extension will not connect", exc_info=True)
            return
        lab = shell._nbbuild_lab = LabComm(shell, state)
        manager.register_target(TARGET, lab.opened)
    for event in ("pre_run_cell", "post_run_cell"):
        if getattr(lab, event) not in shell.events.callbacks[event]:
            shell.events.register(event, getattr(lab, event))


def unload_ipython_extension(shell: Any) -> None:
    """`%unload_ext nbbuild`: the comms say nothing more (a later `%load_ext` takes them up again)."""
    lab = getattr(shell, "_nbbuild_lab", None)
    if lab is None:
        return
    for event in ("pre_run_cell", "post_run_cell"):
        if getattr(lab, event) in shell.events.callbacks[event]:
            shell.events.unregister(event, getattr(lab, event))
