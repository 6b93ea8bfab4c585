"""IPython magics: `%%rule`, `%build`, `%nbbuild`. Thin: parse the line, call the Build API (through
building.py, which names targets as a user does and says what a build did), say one
line. Every nbbuild error becomes a UsageError, which IPython shows as one line.

Contract:
- `%load_ext nbbuild` opens a Build on `.nbbuild/` in the working directory (`NBBUILD_DIR`
  overrides it) with `workers=1`, so rule bodies run on the kernel's thread. Its state lives on the
  shell, so `%reload_ext nbbuild` keeps the rules; `%unload_ext nbbuild` removes the magics.
- `%%rule [NAME] [--lazy] [--policy persist|memory|none]`: the cell becomes a rule (named NAME,
  or after the cell: versions.identity); it is built at once unless --lazy, its outputs are bound
  in the user namespace, and its last expression is the cell's result. Names have versions
  (versions.py): any number of cells may bind a name, and a cell reads the version plain execution
  gives it, the latest bound before it ran; what it changes in place is its version too. A cell
  that binds nothing is a rule as well. Re-running a cell replaces its rule; rules its change made
  stale are named.
- `--executor threads|processes|dask|ADDRESS|CLIENT`, `--timeout S`, `--retries N` on a `%%rule`
  line are the Rule's (Build.rule): the body runs on a process pool or a Dask cluster (`dask`:
  the Client this process already has, else a LocalCluster; or a scheduler's address, or the
  name of a Client in the namespace); what it prints, displays and plots there is shown in the
  cell and replayed as any (elsewhere.py).
- `%%rule NAME(param, other=default)`: a parametric rule; `NAME` is bound to it, and `NAME(...)`
  anywhere returns the value (the cell's `NAME`, or else its last expression), built incrementally.
- `%build TARGET [TARGET ...] [--force] [--dry-run] [-j N] [--graph]`: builds the rules producing
  those names (or parametric calls such as `model(alpha=0.1)`), binds their outputs, and gives the
  report's one line: in a kernel the live build view (widgets.py) settles into it, elsewhere it is
  printed. --force runs the targets themselves again; --dry-run says what would run and why;
  --graph adds the live task graph to the build view.
- `%nbbuild auto [on|off]`: every following code cell runs as a rule without `%%rule` (auto.py
  says which cells stay ordinary).
- `%nbbuild status | why TARGET | graph [TARGET] | store [--quota SIZE] [gc [--foreign] | clear] |
  metrics | dashboard [TARGET]`: look at the build; nothing runs and nothing in the store changes
  (see `%nbbuild?`), but for `store`: --quota (saved in the store), --min-free and --eviction set
  its bounds, gc evicts and prunes now, gc --foreign removes the entries other keys signed (kept
  otherwise), clear empties it of this key's entries; each says what it deleted. In a kernel, graph is SVG (draw.py), metrics and dashboard are widgets; each has the
  text form beside it, which is what a terminal shows.
- After every build, a target reused instead of run replays what it showed when it ran (replay.py).
- With cell ids (JupyterLab, Notebook 7), a rule belongs to its cell: another cell may not take a
  name given with `%%rule NAME`, and a cell that now defines another rule drops its old one.
- Messages name a cell rule as `clean`, not `clean()`; every nbbuild error is one UsageError line,
  and a failing or interrupted rule shows only its own frames.
"""
from __future__ import annotations

import os
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, argument_group, magic_arguments

from ..errors import NbbuildError
from ..engine import randomness
from ..settings import read as read_settings
from .cellcode import compile_cell, parse_signature
from .cells import LAST, OWN, analyse
from .replay import GENERATORS, ORIGINS, REBOUND, SETTINGS
from .showing import show_result
from .versions import identity
from . import ambient, building, views
from .graph import label
from .lines import BUILD_USAGE, NBBUILD_USAGE, STORE_USAGE, parse, parse_rule_line, split_targets, workers
from .state import NotebookState

__all__ = ["NbbuildMagics", "load_ipython_extension", "unload_ipython_extension"]


@magics_class
class NbbuildMagics(Magics):
    shell: InteractiveShell     # Magics allows None; these magics are always registered with a shell

    def __init__(self, shell: InteractiveShell, state: NotebookState):
        super().__init__(shell)
        self.state = state

    @cell_magic
    def rule(self, line: str, cell: str) -> Any:
        """The cell becomes a rule: it runs only when what it reads changed.

        %%rule [NAME] [--lazy] [--policy persist|memory|none] [--executor E] [--timeout S] [--retries N]
        %%rule NAME(param, other=default)

        The cell's outputs are the names it binds at top level, and the values it changes in
        place; its inputs are the names it reads. Any number of cells may bind a name: a cell
        reads the version plain execution gives it, the latest bound before it ran. A version a
        rule cell bound is a dependency; one an ordinary cell bound (a parameter, a helper
        function) is an input by value or by code. Running the cell
        builds the rule (restoring its outputs, and what it printed and displayed, when nothing
        it reads changed) and binds its outputs; the last expression is the cell's result.

        NAME          the rule's name; by default one made from the cell (messages call it
                      by the first name it assigns: `df`, or `df (cell 4)` when several do)
        --lazy        register the rule only; `%build NAME` builds it
        --policy P    persist (default: kept in the store, across restarts), memory (this
                      session only), none (runs at every build)
        --executor E  where the body runs: threads (default, in the kernel), processes (a
                      process pool), dask (the Client you made, else a LocalCluster), a Dask
                      scheduler's address, or the name of a distributed.Client variable
        --timeout S   stop a body elsewhere after S seconds (it fails); in the kernel it is
                      reported as overdue
        --retries N   run a failing body again, up to N more times
        NAME(param, other=default)
                      a parametric rule: the parameters are locals of the cell; `NAME(...)`
                      anywhere returns the value of the cell's `NAME` (or its last expression),
                      built once per distinct arguments

        After a change, the rules it made stale are named ("stale: clean — run %build clean").
        """
        state = self.state
        name, lazy, policy, param_text, options = parse_rule_line(line)
        options = self._resolve(options)
        source = state.auto.python(cell)
        try:
            names = analyse(source)
            params = parse_signature(param_text) if param_text is not None else None
        except NbbuildError as e:
            raise UsageError(str(e)) from None
        if params is not None and name is not None:     # a signature names its rule (parse_rule_line)
            return self._parametric(name, policy, source, names, params, options)
        own = state.own_rules(source)
        # a name is read as the version plain execution gives: the latest binding before this
        # cell; a name this cell bound itself before (`x = x + 1` run again) is read by value
        # but for one read only inside a function the cell defines: that reads the notebook's
        # global when called, as plainly (the rule's version then holds its value, not a fetch)
        fetched = {n: r for n, r in state.versions.resolve(names.inputs, None).items()
                   if r not in own and n not in names.deferred}
        first, named = names.default_name, name is not None
        name = name or identity(state.cell_id, source, fetched, first)
        superseded = state.superseded(name)
        filename = self.shell.compile.cache(source, self.shell.execution_count)
        watch = tuple(n for n in names.inputs if n not in fetched)
        try:
            fn = compile_cell(source, name, filename, fetched, names.outputs, self.shell.user_ns,
                              capture=True, watch=watch)
            rule = state.make_rule(fn, name, policy, options)
        except NbbuildError as e:
            raise UsageError(str(e)) from None
        state.defined(name, superseded, source, first, named)
        produced = tuple(o for o in names.outputs if o not in names.imported)   # a module is the same whoever imports it
        state.versions.imported(name, [o for o in names.outputs if o in names.imported])
        state.versions.bound(name, produced)
        state.outputs[name], state.inputs[name], state.fetches[name] = produced, names.inputs, fetched
        state.rebound(names.outputs)
        if lazy:
            return None
        values = building.build(self.state, self.shell, [rule.task()], summary=False)
        value = values[0] if values else {}
        if isinstance(value, dict):      # what it changed in place is its version now
            # a name another cell bound since the rule it fetched from is not that rule's any more
            origins, rebound = value.get(ORIGINS, {}), value.get(REBOUND, ())
            changed = [k for k in value if not k.startswith(OWN) and k not in produced and k not in names.imported
                       and ((k in names.inputs and k not in fetched) or k in rebound
                            or (k in origins and state.versions.producer(k) == origins[k]))]
            if changed:
                # `df["y"] = ...`: a version of df (of ax, rather than fig, for `ax.plot(...)`)
                state.named_by_change(name, next((k for k in changed if k in names.inputs), changed[0]))
                state.versions.bound(name, changed)
                state.outputs[name] = produced + tuple(changed)
                state.rebound(changed)
                state.rebind({k: value[k] for k in changed})
            if GENERATORS in value:      # the random generators, where this cell left them
                randomness.restore(value[GENERATORS])
            ambient.restore(value.get(SETTINGS, {}))     # and matplotlib's settings
        state.say_stale(state.dependents(name))
        result = value.get(LAST) if isinstance(value, dict) else None
        if result is not None:   # Out[n] as the body formatted it, before its figures were drawn (replay.py)
            show_result(self.shell, result, state.build.attachment(rule.task()))
        return result

    def _resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        """`--executor client`: a name in the namespace (a distributed.Client) is that object."""
        spec = options.get("executor")
        if isinstance(spec, str) and spec.isidentifier() and spec not in ("threads", "processes", "dask"):
            if spec not in self.shell.user_ns:
                raise UsageError(f"%%rule: --executor {spec}: use threads, processes, dask, a scheduler's "
                                 "address, or the name of a distributed.Client")
            options = dict(options, executor=self.shell.user_ns[spec])
        return options

    def _parametric(self, name: str, policy: str, source: str, names: Any, params: Any,
                    options: dict[str, Any], filename: str | None = None) -> None:
        """A rule with parameters: registered, bound under its name, built when called. Like a
        function, a call reads the latest versions of the names it reads: when a cell binds one
        of them again, the rule is made again (`state.functions`) with the versions it now reads."""
        state = self.state
        own = {a.arg for a in params.posonlyargs + params.args + params.kwonlyargs}
        own.update(a.arg for a in (params.vararg, params.kwarg) if a is not None)
        remade = filename is not None
        superseded = [] if remade else state.superseded(name)
        fetched = {n: r for n, r in state.versions.resolve(names.inputs, name).items() if n not in own}
        filename = filename or self.shell.compile.cache(source, self.shell.execution_count)
        try:
            fn = compile_cell(source, name, filename, fetched, names.outputs, self.shell.user_ns, params,
                              capture=True)
            rule = state.make_rule(fn, name, policy, options)
        except NbbuildError as e:
            raise UsageError(str(e)) from None
        state.functions[name] = lambda: self._parametric(name, policy, source, names, params, options, filename)
        if remade:
            state.fetches[name] = fetched
            self.shell.user_ns[name] = rule
            return None
        state.defined(name, superseded, source, None, named=True)
        state.inputs[name] = tuple(n for n in names.inputs if n not in own)
        state.fetches[name] = fetched
        state.parametric.add(name)
        state.versions.bound(None, [name])   # the rule object itself, bound plainly
        self.shell.user_ns[name] = rule
        return None

    @magic_arguments()
    @argument("targets", nargs="*", metavar="TARGET",
              help="a name (its latest version), a rule's name, or a call of a parametric rule such as "
                   "model(alpha=0.1) (its value is the cell's result)")
    @argument("--force", action="store_true",
              help="run the targets themselves again (what they read is still only checked)")
    @argument("--dry-run", action="store_true", help="say what would run and why; run nothing")
    @argument("-j", "--jobs", type=workers, metavar="N",
              help="run up to N rules at once in this build (threads; rule bodies must be thread-safe)")
    @argument("--graph", action="store_true", help="show the task graph in the build view, coloured as tasks run")
    @line_magic
    def build(self, line: str) -> Any:
        """Bring targets up to date, running only what is stale, and bind their outputs.

        While it runs, a live view shows the progress, the task running now and each task's
        outcome; it settles into one line: how many rules ran, were reused and failed, the time
        taken and the time saved. A reused target shows again what it printed and displayed
        when it ran.
        """
        args = parse(self.build, split_targets(line), BUILD_USAGE)
        if not args.targets:
            raise UsageError(f"%build: name at least one target: {BUILD_USAGE}")
        tasks = [building.task_for(self.state, self.shell, t) for t in args.targets]
        if args.dry_run:
            plan = self.state.build.plan(*tasks)
            for task, reason in plan:
                print(label(f"would run: {task} — {reason}"))
            if not plan:
                print("nothing would run: everything is up to date")
            return None
        if args.graph and hasattr(self.state.view, "graph_for"):
            self.state.view.graph_for(tasks)
        values = building.build(self.state, self.shell, tasks, summary=True, force=args.force, workers=args.jobs)
        calls = [v for t, v in zip(tasks, values) if t.rule.name in self.state.parametric]
        return calls[0] if len(tasks) == 1 and calls else None

    @magic_arguments()
    @argument("command", nargs="?", default="", metavar="COMMAND",
              help="status, why, graph, dashboard, store, metrics or auto (above)")
    @argument("words", nargs="*", metavar="ARG",
              help="TARGET for why, graph and dashboard: a name (its latest version), a rule's name, or a "
                   "call such as model(alpha=0.1); gc or clear for store; on or off for auto")
    @argument_group("options of store")
    @argument("--quota", metavar="SIZE", help="set the quota ('5 GB', '500MB', bytes, 'unlimited'); kept in "
              "the store for later sessions (NBBUILD_QUOTA comes first)")
    @argument("--min-free", metavar="SIZE", help="free disk space to keep: values are evicted below it")
    @argument("--eviction", metavar="POLICY", help="gdsf or lru: what goes first: gdsf weighs recompute time, size and "
              "use (default); lru the least recently used")
    @argument("--shared", metavar="URL", help="a team's shared tier behind the store from now on "
              "(s3://bucket/prefix, a shared folder; needs NBBUILD_TEAM_KEY): README \"Team cache\"")
    @argument("--shared-readonly", action="store_true", help="with --shared: read it, never upload")
    @argument("--foreign", action="store_true", help="with gc: remove the entries other keys signed")
    @line_magic
    def nbbuild(self, line: str) -> None:
        """Look at the build; nothing runs (but for `store`: its options, gc and clear).

        %nbbuild status            every rule: up to date / stale / never built / failed / not
                                   stored, its last run time, its stored size, and why
        %nbbuild why TARGET        why TARGET is stale, in words, or that it is up to date
        %nbbuild graph [TARGET]    the task graph: one box per task (coloured by state, with its
                                   last run time and size; targets double-bordered), an arrow
                                   from each input to what reads it. SVG in a notebook, drawn
                                   with Graphviz (or Mermaid where none is); a tree in a terminal
        %nbbuild store             where the store is, its size against its quota
        %nbbuild store --quota SIZE [--min-free SIZE] [--eviction P] [--shared URL]   set its
                                   bounds, or put a team's shared tier behind it (options below)
        %nbbuild store gc          evict now, down to the quota; prune old traces
        %nbbuild store gc --foreign   remove the entries other keys signed (other users,
                                   another XDG_CONFIG_HOME): kept until then, never loaded
        %nbbuild store clear       empty the store of your entries: every rule runs again
        %nbbuild metrics           the last build and this session: tasks ran / reused /
                                   verified, time spent and saved, hit rate, bytes read and
                                   written, evictions, the slowest rules; the store's size
                                   against its quota
        %nbbuild dashboard [TARGET]   the graph and the metrics side by side
        %nbbuild auto [on|off]     every following code cell runs as a rule, without %%rule
                                   (off: as before). A cell stays ordinary when it begins
                                   with another cell magic, holds a line magic or a shell
                                   escape (%matplotlib, !pip), cannot be a rule (a star
                                   import, top-level await), or begins with the line
                                   `# nbbuild: off`

        TARGET is a name (its latest version), a rule's name, or a call such as model(alpha=0.1).
        """
        words = split_targets(line)
        store = bool(words) and words[0] == "store"
        args = parse(self.nbbuild, words, STORE_USAGE if store else NBBUILD_USAGE)
        command, rest = args.command, args.words
        given = [o for o in ("quota", "min_free", "eviction", "shared", "shared_readonly", "foreign")
                 if getattr(args, o) not in (None, False)]
        if command == "store":
            views.store(self.state, rest, args)
        elif given:
            raise UsageError(f"%nbbuild {command}: --{given[0].replace('_', '-')} goes with store: {STORE_USAGE}")
        elif command == "status" and not rest:
            views.status(self.state)
        elif command == "why" and len(rest) == 1:
            print(label(self.state.build.why(building.task_for(self.state, self.shell, rest[0]))))
        elif command in ("graph", "dashboard") and len(rest) <= 1:
            targets = [building.task_for(self.state, self.shell, rest[0])] if rest else None
            views.graph(self.state, targets, dashboard=command == "dashboard")
        elif command == "metrics" and not rest:
            views.metrics(self.state)
        elif command == "auto" and (not rest or rest == ["on"] or rest == ["off"]):
            if rest == ["off"]:
                self.state.auto.off()
            else:
                self.state.auto.on()
        else:
            said = f"%nbbuild: {line.strip()!r}? " if line.strip() else ""
            raise UsageError(f"{said}usage: {NBBUILD_USAGE}")


def load_ipython_extension(shell: Any) -> None:
    state = getattr(shell, "_nbbuild_state", None)
    if state is None:
        try:
            settings = read_settings()      # once, now: a `%env NBBUILD_...` before %load_ext counts
            path = settings.dir or os.path.join(os.getcwd(), ".nbbuild")
            state = shell._nbbuild_state = NotebookState(shell, path, settings)
        except NbbuildError as e:
            raise UsageError(f"nbbuild: {e}") from None
    shell.user_ns.update(state.hooks)
    for event in ("pre_run_cell", "post_run_cell", "post_execute"):
        if getattr(state, event) not in shell.events.callbacks[event]:
            shell.events.register(event, getattr(state, event))
    shell.register_magics(NbbuildMagics(shell, state))


def unload_ipython_extension(shell: Any) -> None:
    state = getattr(shell, "_nbbuild_state", None)
    if state is not None:
        state.auto.off()
    for event in ("pre_run_cell", "post_run_cell", "post_execute"):
        if state is not None and getattr(state, event) in shell.events.callbacks[event]:
            shell.events.unregister(event, getattr(state, event))
    magics = shell.magics_manager.magics
    magics["cell"].pop("rule", None)
    magics["line"].pop("build", None)
    magics["line"].pop("nbbuild", None)
