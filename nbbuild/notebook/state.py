"""The notebook's side of a build: its Build, which rule produces which name, which cell defines
which rule, and how builds are shown. The magics read and change it; it lives on the shell, so
`%reload_ext nbbuild` keeps it.

Contract:
- `NotebookState(shell, path, settings)` opens a Build at `path` with `workers=1` (rule bodies on the
  kernel's thread) and the NBBUILD_* settings as read at `%load_ext` (settings.py), puts the fetch and capture hooks that compiled cells call into the user
  namespace (`hooks`: elsewhere.CellFetch, CellCapture, which also work in a worker), and
  replays, after every build, what reused targets showed when they ran.
- `view` shows every top-level build: in a Jupyter kernel the live widget (widgets.BuildView,
  whose box settles into the report's line; a build over before its first tick shows that line
  as HTML, no widget), elsewhere (terminal IPython) the text line on stderr
  (console.TextProgress; NBBUILD_PROGRESS=0 turns it off). With `NBBUILD_VIEW=text` (what `nbbuild run` sets; `widget` is the
  default, anything else one SettingError line) a kernel shows the text line too, on the kernel
  process's own stderr (the terminal of a headless run, not the cell's output), each build's
  report line after it led by its targets. `rich` says whether the front end takes widgets and SVG.
- `versions` (versions.Versions) says which rule bound the latest version of each name, as cells
  run: a rule cell when it is defined and when it runs, an ordinary cell when it binds a name or
  reads one a rule bound (it may have changed it in place: it is read by value from then on).
  For each cell rule, `inputs` are the names its cell reads, `fetches` the rules whose versions it
  reads (name -> rule), `outputs` the names it binds (with those it changed in place, once run).
- Identity: with cell ids (JupyterLab, Notebook 7: `pre_run_cell`), a rule belongs to its cell:
  `superseded(name)` refuses a rule name another cell's rule has and lists the rules this cell
  defined before under other names, which `defined(...)` then drops. Without cell ids, a cell's
  rule is named after its source and the versions it reads (versions.identity).
- `auto` (auto.Auto): `%nbbuild auto` makes every following code cell a rule.
- `bind(outputs, rule, spoiled)`: a rule's outputs enter the namespace, but for names a later cell
  bound again (a dependency run for a target does not undo later cells); a fetched value the
  body changed in place (`spoiled`) is dropped from memory, and the stored one is used from then
  on.
- `title(rule)`: how messages name a cell rule (graph.label): the first name it binds, with its
  cell's execution count when another cell's rule binds that name first too (`df (cell 4)`);
  `cell 7` for a cell that binds no name.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Sequence

from IPython.core.error import UsageError

from ..build import Build
from ..engine.explain import Standing
from ..settings import Settings
from ..report.console import TextProgress, own_stderr
from ..report.listeners import Listener
from .auto import Auto
from .closures import Closures
from .cells import CAPTURE, FETCH, LAST, OWN, analyse
from .elsewhere import CellCapture, CellFetch, received
from .graph import TITLES, label, snapshot
from .replay import MODULES, rebound
from .showing import after_cell, replay
from .versions import Versions, fingerprint, unchangeable

if TYPE_CHECKING:
    from ..report.report import BuildReport

__all__ = ["NotebookState", "Replay"]


class Replay(Listener):
    """After any build (a magic, or `model(alpha=0.1)` in a plain cell): the notebook's replay."""

    def __init__(self, state: NotebookState):
        self.state = state

    def built(self, build: Any, targets: Sequence[Any]) -> None:
        self.state.replay_reused(list(targets), build.report)


class NotebookState:
    """The notebook's Build and which rule produces which name."""

    def __init__(self, shell: Any, path: str, settings: Settings | None = None):
        self.shell = shell
        self.build = Build(path, workers=1, progress=False, settings=settings)
        self.versions = Versions()
        self.outputs: dict[str, tuple[str, ...]] = {}
        self.inputs: dict[str, tuple[str, ...]] = {}
        self.fetches: dict[str, dict[str, str]] = {}
        self.parametric: set[str] = set()
        self.changers: set[str] = set()      # default-named rules titled by a name they changed in place
        self.functions: dict[str, Any] = {}      # parametric rule -> remakes it with the versions it reads now
        self.cells: dict[str, str] = {}          # rule name -> id of the cell that defines it
        self.sources: dict[str, str] = {}        # rule name -> its cell's source
        self.firsts: dict[str, str | None] = {}  # default-named rule -> the name it binds first
        self.numbers: dict[str, int] = {}        # rule name -> execution count of its cell's last run
        self.cell_id: str | None = None           # the running cell's id (JupyterLab sends one)
        self.cell_source = ""
        self.ran_rule = False                     # the running cell is a rule cell (or a build)
        self.plain_reads: Any = None              # an ordinary cell's reads, before it ran
        self.namespace_before: dict | None = None  # and the namespace's bindings then
        self.ours: dict = {}                      # what nbbuild bound in the namespace during the cell
        self.closures = Closures()                # functions of rule cells reading their cell's names
        self.cell_number = 0                      # the running cell's In [n]
        self.auto = Auto(shell)
        self.hooks = {FETCH: CellFetch(self), CAPTURE: CellCapture(self)}
        shell.user_ns.update(self.hooks)
        self.build.watch(Replay(self))
        # a kernel's front end draws widgets; a terminal shell gets the text line
        self.rich = getattr(shell, "kernel", None) is not None
        shown = self.build.settings.view
        if self.rich and shown != "text":
            from .widgets import BuildView
            from .draw import html
            self.view: Any = BuildView(snapshot=self.graph, draw=html)
        elif self.rich:
            # a headless run: nobody sees the cells' outputs while they run, the terminal does
            self.view = TextProgress(stream=own_stderr(), names=label, targets=True)
        else:
            self.view = TextProgress(summary=False, names=label)
        if self.rich or self.build.settings.progress is not False:
            self.build.watch(self.view)     # a terminal shell's line can be turned off: NBBUILD_PROGRESS=0

    def pre_run_cell(self, info: Any = None) -> None:
        self.cell_id = getattr(info, "cell_id", None)
        self.cell_source = getattr(info, "raw_cell", None) or ""
        self.ran_rule = False
        self.auto.arm(self.cell_source)
        self.plain_reads = self._before_plainly(self.cell_source.lstrip())
        self.ours.clear()
        self.namespace_before = dict(self.shell.user_ns) if self.plain_reads is not None else None
        # the cell's In [n]: IPython counts a cell that is kept in the history before it runs
        count = int(getattr(self.shell, "execution_count", 0) or 0)
        self.cell_number = count - 1 if getattr(info, "store_history", False) else count

    def post_execute(self) -> None:
        """After the cell's result (Out[n]): the figures it drew or replayed, as plain Jupyter."""
        after_cell(self.shell)

    def post_run_cell(self, result: Any = None) -> None:
        """An ordinary cell: the names it binds are its versions now, read by value; names it
        reads that rules bound may have been changed in place, so they are read by value too.
        One that rebinds a name rules read by value (`threshold = 0.7`) names the rules it made
        stale, as an edited rule cell does."""
        before, self.plain_reads = self.plain_reads, None
        if self.ran_rule or before is None:
            return
        names, fingerprints = before
        self.versions.read_plainly(self.changed_plainly(names.inputs, fingerprints))
        # and what it bound through a function's `global x`, `globals()[...]`, `exec`
        bound = set(names.outputs) | set(rebound(self.namespace_before or {}, self.shell.user_ns, self.ours))
        self.namespace_before = None
        ns = self.shell.user_ns
        self.follow({n: ns[n] for n in bound if n in ns})
        self.versions.bound(None, list(bound))
        self.rebound(set(names.inputs) | bound)
        readers = [r for r, reads in self.inputs.items()
                   if any(n in bound and n not in self.fetches.get(r, {}) for n in reads)]
        if readers:
            found = list(readers)
            for r in readers:
                found += [d for d in self.dependents(r) if d not in found]
            self.say_stale(found)

    def _before_plainly(self, source: str) -> tuple[Any, dict[str, dict[str, str | None]]] | None:
        """Before an ordinary cell runs: what it reads, and a fingerprint of each name of each rule
        value it reads from (name by name, as `versions.Changes` does for a rule cell: a name
        that pickles differently each time, a Figure, changes only itself). None: not an ordinary
        cell (a rule cell, a build, a cell `%nbbuild auto` makes a rule), or one that cannot be read."""
        if not source or source.startswith(("%%rule", "%build", "%nbbuild")):
            return None
        try:
            if self.auto.enabled and self.auto.is_rule(source):
                return None
            names = analyse(self.auto.python(source))
        except Exception:  # any cell at all, even one that cannot be parsed: then nothing is known
            return None
        fingerprints: dict[str, dict[str, str | None]] = {}
        for r in {p for n in names.inputs if (p := self.versions.producer(n)) is not None}:
            held = self.build.remembered(self.build.rules[r].task()) if self._plain_rule(r) else None
            if held is not None and isinstance(held[1], dict):
                fingerprints[r] = {k: fingerprint(v) for k, v in held[1].items() if not unchangeable(v)}
        return names, fingerprints

    def _plain_rule(self, r: str | None) -> bool:
        return r is not None and r in self.build.rules and r not in self.parametric

    def changed_plainly(self, reads: tuple[str, ...], before: dict[str, dict[str, str | None]]) -> list[str]:
        """Of the names an ordinary cell read, those whose rule's value it may have changed in
        place (or that no longer hold it): their version is the namespace's from now on, and the
        rule's value in memory, changed, is dropped (its stored one stays)."""
        ns, changed = self.shell.user_ns, []
        rules: dict[str, list[str]] = {}
        for n in reads:
            r = self.versions.producer(n)
            if r is not None and self._plain_rule(r):
                rules.setdefault(r, []).append(n)
        for r, read in rules.items():
            task = self.build.rules[r].task()
            held = self.build.remembered(task)
            value = held[1] if held is not None else None
            if not isinstance(value, dict) or r not in before or any(n not in ns or ns[n] is not value.get(n)
                                                                     for n in read):
                changed += read
                continue
            spoiled = [k for k, f in before[r].items() if f is None or fingerprint(value.get(k)) != f]
            if spoiled:
                changed += [n for n in self.versions.names_of(r)
                            if n in spoiled and n in ns and ns[n] is value.get(n)]
                self.build.forget(task)
        return changed

    def rebound(self, names: Any) -> None:
        """Cells bound `names` again: a parametric rule reading one of them reads the new version
        from now on, as a function reads a global when called."""
        names = set(names)
        for rule, remake in list(self.functions.items()):
            reads = set(self.inputs.get(rule, ())) & names
            if reads and any(self.versions.producer(n) != self.fetches.get(rule, {}).get(n) for n in reads):
                remake()

    def say_stale(self, rules: list[str]) -> None:
        """One line naming which of `rules` (their known calls, for parametric ones) are stale."""
        b = self.build
        stale = []
        for r in rules:
            rule = b.rules.get(r)
            if rule is None:
                continue
            tasks = b.known_tasks(rule) if r in self.parametric else [rule.task()]
            stale += [label(repr(t)) for t in tasks if b.status(t).state == Standing.STALE]
        if stale:
            print(f"stale: {', '.join(stale)} — run %build {self.target_text(stale[-1])}")

    def target_text(self, title: str) -> str:
        """What to type after %build for a rule named `title` in messages."""
        for rule, t in TITLES.items():
            if t == title:
                first = self.firsts.get(rule)
                return first if first and self.versions.producer(first) == rule else rule
        return title

    def make_rule(self, fn: Any, name: str, policy: str, options: dict[str, Any]) -> Any:
        """A cell's rule (options: executor, timeout, retries). A body run elsewhere shows here
        what it showed there, and binds its outputs (elsewhere.received)."""
        rule = self.build.rule(fn, name=name, policy=policy, **options)
        rule.received = received(self)
        return rule

    def own_rules(self, source: str) -> set[str]:
        """The rules this cell defined before, by its cell id (whose `x = x + 1` run again reads
        the `x` it made, by value); none without a cell id."""
        if self.cell_id is not None:
            return {r for r, c in self.cells.items() if c == self.cell_id}
        # without a cell id, a cell run again is named after the version it reads: reading its
        # own last version makes it another rule (`x = x + 1` gives a new x each time)
        return set()

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

    def defined(self, name: str, superseded: list[str], source: str, first: str | None, named: bool) -> None:
        """Rule `name` is the running cell's now (`named`: the user gave the name; otherwise the
        cell binds `first` first, or nothing)."""
        for old in superseded:
            self.drop(old)
        if self.cell_id is not None:
            self.cells[name] = self.cell_id
        self.sources[name] = source
        self.numbers[name] = self.cell_number
        if named:
            self.firsts.pop(name, None)
            TITLES.pop(name, None)
        else:
            self.firsts[name] = first
        self.ran_rule = True
        self._retitle()

    def named_by_change(self, rule: str, name: str) -> None:
        """A default-named rule that binds nothing but changed `name` in place is titled by it."""
        if rule in self.firsts and self.firsts[rule] is None:
            self.firsts[rule] = name
            self.changers.add(rule)
            self._retitle()

    def drop(self, name: str) -> None:
        self.build.rules.pop(name, None)
        for table in (self.cells, self.sources, self.outputs, self.inputs, self.fetches, self.numbers, self.firsts):
            table.pop(name, None)
        self.parametric.discard(name)
        self.changers.discard(name)
        self.functions.pop(name, None)
        self.versions.dropped(name)
        TITLES.pop(name, None)

    def _retitle(self) -> None:
        """Titles of default-named rules: the name they bind first, and the cell's number when
        several rules bind it first (or none)."""
        shared: dict[str | None, int] = {}
        for rule, first in self.firsts.items():
            shared[first] = shared.get(first, 0) + 1
        for rule, first in self.firsts.items():
            n = self.numbers.get(rule, 0)
            if first is None:
                TITLES[rule] = f"cell {n}" if n else "cell"
            else:       # a cell that changed a name in place never made its first version
                alone = shared[first] == 1 and rule not in self.changers
                TITLES[rule] = first if alone else f"{first} (cell {n})"

    def replay_reused(self, targets: list, report: BuildReport) -> None:
        """After any build (a magic, or `model(alpha=0.1)` in a plain cell): a target reused
        instead of run shows again what it showed when it ran."""
        ran, seen = set(report.executed), set()
        for task in targets:
            if task.key not in seen and repr(task) not in ran:
                replay(self.shell, self.build.attachment(task))
            seen.add(task.key)

    def bind(self, outputs: dict, rule: str | None = None, spoiled: list[str] | tuple = ()) -> None:
        for digest in spoiled:
            self.build.forget(digest=digest)
        wanted = {k: v for k, v in outputs.items() if not k.startswith(OWN)}
        wanted.update((k, importlib.import_module(m)) for k, m in outputs.get(MODULES, {}).items())
        wanted = {k: v for k, v in wanted.items() if rule is None or self.versions.binds(rule, k)}
        self.ours.update(wanted)
        self.shell.user_ns.update(wanted)
        self.follow(wanted)
        self.closures.register(wanted)

    def rebind(self, values: dict) -> None:
        """Names bound again outside a rule's own outputs (a change in place)."""
        self.shell.user_ns.update(values)
        self.follow(values)

    def follow(self, values: dict) -> None:
        """The functions of rule cells that read these names read their new values (closures.py);
        the names holding them are then versions of the namespace's, read by value."""
        changed = self.closures.bound(values)
        if not changed:
            return
        names = [n for n in self.closures.holders(self.shell.user_ns, changed) if n not in values]
        for r in {self.versions.producer(n) for n in names} - {None}:
            if r in self.build.rules and r not in self.parametric:
                self.build.forget(self.build.rules[r].task())    # its value in memory is not its stored one now
        self.versions.read_plainly(names)

    def rule_for(self, target: str) -> Any:
        producer = self.versions.producer(target)
        if producer is None and target in self.versions.latest:
            raise UsageError(f"{target!r} was last bound by an ordinary cell: there is nothing to build; "
                             "make that cell a rule (%%rule) to build it")
        name = producer or target
        if name not in self.build.rules:
            known = ", ".join(sorted(n for n, r in self.versions.latest.items() if r is not None)) or "none yet"
            raise UsageError(f"no rule produces {target!r} (names produced: {known})")
        return self.build.rules[name]

    def static(self) -> dict[str, tuple[str, ...]]:
        """Rule name -> the rules whose versions its cell reads (before it has run)."""
        return {rule: tuple(dict.fromkeys(r for r in self.fetches.get(rule, {}).values() if r != rule))
                for rule in self.inputs}

    def graph(self, targets: list | None = None) -> Any:
        """The graph snapshot of the targets (every rule when None)."""
        return snapshot(self.build, self.static(), targets)

    def graph_html(self, targets: list | None = None, expand: Any = ()) -> str:
        """The graph as HTML for a widget (draw.html)."""
        from .draw import html
        return html(self.graph(targets), expand=expand)

    def dependents(self, name: str) -> list[str]:
        """Rules that read, directly or not, a version rule `name` bound, in definition order."""
        found: list[str] = []
        frontier = {name}
        changed = True
        while changed:
            changed = False
            for rule, reads in self.fetches.items():
                if rule != name and rule not in found and frontier.intersection(reads.values()):
                    found.append(rule)
                    frontier.add(rule)
                    changed = True
        return found
