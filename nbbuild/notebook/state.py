"""The notebook's side of a build: its Build, which rule produces which name, which cell defines
which rule, and how builds are shown. The magics read and change it; it lives on the shell, so
`%reload_ext nbbuild` keeps it.

Contract:
- `NotebookState(shell, path)` opens a Build at `path` with `workers=1` (rule bodies on the
  kernel's thread), puts the fetch and capture hooks that compiled cells call into the user
  namespace (`hooks`: elsewhere.CellFetch, CellCapture, which also work in a worker), and
  replays, after every build, what reused targets showed when they ran.
- `view` shows every top-level build: in a Jupyter kernel the live widget (widgets.BuildView,
  whose box settles into the report's line), elsewhere (terminal IPython) the text line on stderr
  (console.TextProgress; NBBUILD_PROGRESS=0 turns it off). With `NBBUILD_VIEW=text` (what `nbbuild run` sets; `widget` is the
  default, anything else one UsageError line) a kernel shows the text line too, on the kernel
  process's own stderr (the terminal of a headless run, not the cell's output), each build's
  report line after it led by its targets. `rich` says whether the front end takes widgets and SVG.
- `producers` maps each output name to the one rule that produces it (imports are not listed: a
  module is the same whoever imports it); `inputs` and `outputs` are each cell rule's names.
- Identity: with JupyterLab's cell ids (`pre_run_cell`), a rule belongs to its cell:
  `superseded(name)` refuses a name another cell's rule has and lists the rules this cell defined
  before under other names, which `defined(name, superseded)` then drops. Without cell ids the
  rule's name is the cell's identity.
"""
from __future__ import annotations

import os
from typing import Any

from IPython.core.error import UsageError

from ..build import Build
from ..console import TextProgress, own_stderr
from .cells import CAPTURE, FETCH, LAST, analyse
from .elsewhere import CellCapture, CellFetch, received
from .graph import label, snapshot
from .replay import replay

__all__ = ["NotebookState"]


class NotebookState:
    """The notebook's Build and which rule produces which name."""

    def __init__(self, shell: Any, path: str):
        self.shell = shell
        self.build = Build(path, workers=1, progress=False)
        self.producers: dict[str, str] = {}      # output name -> rule name
        self.outputs: dict[str, tuple[str, ...]] = {}
        self.inputs: dict[str, tuple[str, ...]] = {}
        self.parametric: set[str] = set()
        self.cells: dict[str, str] = {}          # rule name -> id of the cell that defines it
        self.cell_id: str | None = None           # the running cell's id (JupyterLab sends one)
        self.cell_source = ""
        self.hooks = {FETCH: CellFetch(self), CAPTURE: CellCapture(self)}
        shell.user_ns.update(self.hooks)
        self.build.observers.append(self.replay_reused)
        # a kernel's front end draws widgets; a terminal shell gets the text line
        self.rich = getattr(shell, "kernel", None) is not None
        shown = os.environ.get("NBBUILD_VIEW", "").strip().lower()
        if shown not in ("", "widget", "text"):
            raise UsageError(f"NBBUILD_VIEW={shown!r}: use text (the progress line on stderr) or widget (the default)")
        if self.rich and shown != "text":
            from .widgets import BuildView
            from .draw import html
            self.view: Any = BuildView(snapshot=self.graph, draw=html)
        elif self.rich:
            # a headless run: nobody sees the cells' outputs while they run, the terminal does
            self.view = TextProgress(stream=own_stderr(), names=label, targets=True)
        else:
            self.view = TextProgress(summary=False, names=label)
        if self.rich or os.environ.get("NBBUILD_PROGRESS", "").strip() not in ("0", "false", "no", "off"):
            self.build.watch(self.view)     # a terminal shell's line can be turned off: NBBUILD_PROGRESS=0

    def pre_run_cell(self, info: Any = None) -> None:
        self.cell_id = getattr(info, "cell_id", None)
        self.cell_source = getattr(info, "raw_cell", None) or ""

    def post_run_cell(self, result: Any = None) -> None:
        """An ordinary cell that rebinds a name rules read (`threshold = 0.7`) names the rules it
        made stale, as an edited rule cell does: their bound values are out of date now."""
        source = self.cell_source.lstrip()
        if not source or source.startswith(("%%rule", "%build", "%nbbuild")) or not self.inputs:
            return
        try:
            bound = set(analyse(self.shell.transform_cell(source)).outputs) - set(self.producers)
        except Exception:  # any cell at all, even one that cannot be parsed: then there is nothing to say
            return
        readers = [r for r, reads in self.inputs.items() if bound.intersection(reads)]
        if readers:
            found = list(readers)
            for r in readers:
                found += [d for d in self.dependents(r) if d not in found]
            self.say_stale(found)

    def say_stale(self, rules: list[str]) -> None:
        """One line naming which of `rules` (their known calls, for parametric ones) are stale."""
        b = self.build
        stale = []
        for r in rules:
            rule = b.rules.get(r)
            if rule is None:
                continue
            tasks = b.known_tasks(rule) if r in self.parametric else [rule.task()]
            stale += [label(repr(t)) for t in tasks if b.status(t).state == "stale"]
        if stale:
            print(f"stale: {', '.join(stale)} — run %build {stale[-1]}")

    def make_rule(self, fn: Any, name: str, policy: str, options: dict[str, Any]) -> Any:
        """A cell's rule (options: executor, timeout, retries). A body run elsewhere shows here
        what it showed there, and binds its outputs (elsewhere.received)."""
        rule = self.build.rule(fn, name=name, policy=policy, **options)
        rule.received = received(self)
        return rule

    def superseded(self, name: str) -> list[str]:
        """The rules the running cell defined before under other names, which rule `name` now
        replaces. With cell ids (JupyterLab), another cell may not take a rule's name; without
        them (nbclient, papermill), the name is the cell's identity: the rule is replaced."""
        cid = self.cell_id
        if cid is None:
            return []
        owner = self.cells.get(name)
        if owner is not None and owner != cid and name in self.build.rules:
            raise UsageError(f"rule {name} is defined by another cell; name this one: %%rule OTHER_NAME")
        return [old for old, c in self.cells.items() if c == cid and old != name]

    def defined(self, name: str, superseded: list[str]) -> None:
        for old in superseded:
            self.drop(old)
        if self.cell_id is not None:
            self.cells[name] = self.cell_id

    def drop(self, name: str) -> None:
        self.build.rules.pop(name, None)
        self.cells.pop(name, None)
        self.outputs.pop(name, None)
        self.inputs.pop(name, None)
        self.parametric.discard(name)
        for out in [o for o, r in self.producers.items() if r == name]:
            del self.producers[out]

    def replay_reused(self, targets: list, report: Any) -> None:
        """After any build (a magic, or `model(alpha=0.1)` in a plain cell): a target reused
        instead of run shows again what it showed when it ran."""
        ran, seen = set(report.executed), set()
        for task in targets:
            if task.key not in seen and repr(task) not in ran:
                replay(self.shell, self.build.attachment(task))
            seen.add(task.key)

    def bind(self, outputs: dict) -> None:
        self.shell.user_ns.update({k: v for k, v in outputs.items() if k != LAST})

    def rule_for(self, target: str) -> Any:
        name = self.producers.get(target, target)
        if name not in self.build.rules:
            known = ", ".join(sorted(self.producers)) or "none yet"
            raise UsageError(f"no rule produces {target!r} (names produced: {known})")
        return self.build.rules[name]

    def static(self) -> dict[str, tuple[str, ...]]:
        """Rule name -> the rules producing the names its cell reads (before it has run)."""
        return {rule: tuple(dict.fromkeys(self.producers[n] for n in reads
                                          if self.producers.get(n, rule) != rule))
                for rule, reads in self.inputs.items()}

    def graph(self, targets: list | None = None) -> Any:
        """The graph snapshot of the targets (every rule when None)."""
        return snapshot(self.build, self.static(), targets)

    def graph_html(self, targets: list | None = None) -> str:
        """The graph as HTML for a widget (draw.html)."""
        from .draw import html
        return html(self.graph(targets))

    def dependents(self, name: str) -> list[str]:
        """Rules that read, directly or not, what rule `name` produces, in definition order."""
        found: list[str] = []
        frontier = set(self.outputs.get(name, ()))
        changed = True
        while changed:
            changed = False
            for rule, reads in self.inputs.items():
                if rule != name and rule not in found and frontier.intersection(reads):
                    found.append(rule)
                    frontier.update(self.outputs.get(rule, ()))
                    changed = True
        return found
