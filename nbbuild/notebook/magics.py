"""IPython magics: `%%rule`, `%build`, `%nbbuild`. Thin: parse the line, call the Build API, say one
line. Every nbbuild error becomes a UsageError, which IPython shows as one line.

Contract:
- `%load_ext nbbuild` opens a Build on `.nbbuild/` in the working directory (`NBBUILD_DIR`
  overrides it) with `workers=1`, so rule bodies run on the kernel's thread. Its state lives on the
  shell, so `%reload_ext nbbuild` keeps the rules; `%unload_ext nbbuild` removes the magics.
- `%%rule [NAME] [--lazy] [--policy persist|memory|none]`: the cell becomes the rule NAME (by
  default, the first name it assigns); it is built at once unless --lazy, its outputs are bound in
  the user namespace, and its last expression is the cell's result. A name another rule produces
  is refused. Re-running a cell replaces its rule; rules its change made stale are named.
- `%%rule NAME(param, other=default)`: a parametric rule; `NAME` is bound to it, and `NAME(...)`
  anywhere returns the value (the cell's `NAME`, or else its last expression), built incrementally.
- `%build TARGET [TARGET ...] [--force] [--dry-run] [-j N]`: builds the rules producing those names
  (or parametric calls such as `model(alpha=0.1)`), binds their outputs, prints the report's one
  line. --force runs the targets themselves again; --dry-run says what would run and why.
- `%nbbuild status | why TARGET | graph [TARGET] | store [--quota SIZE] [gc | clear] | metrics`:
  look at the build; nothing runs (see `%nbbuild?`), but for `store`: --quota (saved in the
  store), --min-free and --eviction set its bounds, gc evicts and prunes now, clear empties it.
- After every build, a target reused instead of run replays what it showed when it ran (replay.py).
- With JupyterLab's cell ids, a rule belongs to its cell: another cell may not take its name, and
  a cell that now defines another rule drops its old one. Without them the name is the identity.
- Messages name a cell rule as `clean`, not `clean()`; every nbbuild error is one UsageError line,
  and a failing or interrupted rule shows only its own frames.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import sys
from typing import Any

import cloudpickle
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from ..errors import BuildError, CycleError, NbbuildError
from ..rule import POLICIES
from ..eviction import POLICIES as EVICTIONS
from ..eviction import parse_size
from .cells import CAPTURE, FETCH, LAST, analyse, compile_cell, parse_signature
from .graph import label, seconds_text, size_text, snapshot, table, tree
from .state import NotebookState

__all__ = ["NbbuildMagics", "load_ipython_extension", "unload_ipython_extension"]


_NBBUILD_USAGE = ("%nbbuild status | why TARGET | graph [TARGET] | store [--quota SIZE] [gc | clear] | metrics"
                  " (%nbbuild? for help)")
_SIGNATURE = re.compile(r"^\s*([^\s(]+)\s*\((.*)\)(.*)$", re.S)


def _parse_rule_line(line: str) -> tuple[str | None, bool, str, str | None]:
    """(name, --lazy, policy, parameter text or None)."""
    params = None
    m = _SIGNATURE.match(line)
    if not m and "(" in line:
        raise UsageError(f"%%rule: unbalanced brackets in {line.strip()!r}; usage: %%rule NAME(param, other=default)")
    if m:
        if not m.group(1).isidentifier():
            raise UsageError(f"%%rule: rule name {m.group(1)!r} is not a Python identifier")
        params, line = m.group(2), m.group(1) + " " + m.group(3)
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise UsageError(f"%%rule: {e}") from None
    name, lazy, policy = None, False, "persist"
    it = iter(words)
    for w in it:
        if w == "--lazy":
            lazy = True
        elif w == "--policy" or w.startswith("--policy="):
            policy = w.partition("=")[2] if "=" in w else next(it, "")
            if policy not in POLICIES:
                raise UsageError(f"%%rule: --policy takes one of {', '.join(POLICIES)}, not {policy!r}")
        elif w.startswith("-"):
            raise UsageError(f"%%rule: unknown option {w!r}; usage: %%rule [NAME] [--lazy] [--policy P]")
        elif name is None:
            if not w.isidentifier():
                raise UsageError(f"%%rule: rule name {w!r} is not a Python identifier")
            name = w
        else:
            raise UsageError(f"%%rule: one rule name only, got {name!r} and {w!r}")
    return name, lazy, policy, params


def _split_targets(line: str) -> list[str]:
    """Words of a %build line; a parametric call such as `model(alpha = 0.1)` is one word."""
    words, depth, current = [], 0, ""
    for ch in line:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch.isspace() and depth <= 0:
            if current:
                words.append(current)
            current, depth = "", 0
        else:
            current += ch
    if depth > 0:
        raise UsageError(f"%build: unbalanced brackets in {line.strip()!r}")
    return words + ([current] if current else [])


@magics_class
class NbbuildMagics(Magics):
    def __init__(self, shell: Any, state: NotebookState):
        super().__init__(shell)
        self.state = state

    @cell_magic
    def rule(self, line: str, cell: str) -> Any:
        """The cell becomes a rule: it runs only when what it reads changed.

        %%rule [NAME] [--lazy] [--policy persist|memory|none]
        %%rule NAME(param, other=default)

        The cell's outputs are the names it binds at top level; its inputs are the names it
        reads. A name another rule produces is a dependency; any other global (a parameter set in
        an ordinary cell, a helper function) is an input by value or by code. Running the cell
        builds the rule (restoring its outputs, and what it printed and displayed, when nothing
        it reads changed) and binds its outputs; the last expression is the cell's result.

        NAME          the rule's name; by default the first name the cell assigns
        --lazy        register the rule only; `%build NAME` builds it
        --policy P    persist (default: kept in the store, across restarts), memory (this
                      session only), none (runs at every build)
        NAME(param, other=default)
                      a parametric rule: the parameters are locals of the cell; `NAME(...)`
                      anywhere returns the value of the cell's `NAME` (or its last expression),
                      built once per distinct arguments

        One name has one producing rule: a cell binding a name another rule produces is refused.
        After a change, the rules it made stale are named ("stale: clean — run %build clean").
        """
        state = self.state
        name, lazy, policy, param_text = _parse_rule_line(line)
        source = self.shell.transform_cell(cell)
        try:
            names = analyse(source)
            params = parse_signature(param_text) if param_text is not None else None
        except NbbuildError as e:
            raise UsageError(str(e)) from None
        if params is not None:
            return self._parametric(name, policy, source, names, params)
        name = name or names.default_name
        if name is None:
            raise UsageError("%%rule: the cell binds no name; give the rule one: %%rule NAME")
        superseded = state.superseded(name)
        produced = tuple(o for o in names.outputs if o not in names.imported)   # imports are shared
        for out in names.outputs:
            owner = state.producers.get(out)
            if owner is not None and owner != name and owner not in superseded:
                raise UsageError(f"{out!r} is already produced by rule {owner}; rule {name} cannot bind it too: "
                                 f"rename it here, or `del {out}` at the end of this cell if no other cell needs it")
        fetched = tuple(n for n in names.inputs if state.producers.get(n, name) != name)
        filename = self.shell.compile.cache(source, self.shell.execution_count)
        try:
            fn = compile_cell(source, name, filename, fetched, names.outputs, self.shell.user_ns,
                              capture=True)
            rule = state.build.rule(fn, name=name, policy=policy)
        except NbbuildError as e:
            raise UsageError(str(e)) from None
        state.defined(name, superseded)
        for out in [o for o, r in state.producers.items() if r == name]:
            del state.producers[out]
        state.producers.update({o: name for o in produced})
        state.outputs[name], state.inputs[name] = produced, names.inputs
        if lazy:
            return None
        values = self._build([rule.task()], summary=False)
        self._say_stale(name)
        return values[0].get(LAST) if values else None

    def _parametric(self, name: str, policy: str, source: str, names: Any, params: Any) -> None:
        """A rule with parameters: registered, bound under its name, built when called."""
        state = self.state
        own = {a.arg for a in params.posonlyargs + params.args + params.kwonlyargs}
        own.update(a.arg for a in (params.vararg, params.kwarg) if a is not None)
        superseded = state.superseded(name)
        if name in state.producers and state.producers[name] not in superseded:
            raise UsageError(f"{name!r} is already produced by rule {state.producers[name]}; "
                             f"a parametric rule {name} cannot take its name")
        fetched = tuple(n for n in names.inputs if n in state.producers and n not in own)
        filename = self.shell.compile.cache(source, self.shell.execution_count)
        try:
            fn = compile_cell(source, name, filename, fetched, names.outputs, self.shell.user_ns, params,
                              capture=True)
            rule = state.build.rule(fn, name=name, policy=policy)
        except NbbuildError as e:
            raise UsageError(str(e)) from None
        state.defined(name, superseded)
        state.inputs[name] = tuple(n for n in names.inputs if n not in own)
        state.parametric.add(name)
        self.shell.user_ns[name] = rule
        return None

    def _task(self, target: str) -> Any:
        """A target: a name a rule produces, a rule's name, or a call of a parametric rule."""
        if "(" not in target:
            rule = self.state.rule_for(target)
            try:
                return rule.task()
            except NbbuildError as e:   # a parametric rule named without its arguments
                raise UsageError(f"{e}; name a call: {target}(...)") from None
        try:
            call = ast.parse(target, mode="eval").body
        except SyntaxError:
            raise UsageError(f"%build: {target!r} is neither a name nor a call") from None
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            raise UsageError(f"%build: {target!r} is neither a name nor a call of a rule")
        rule = self.state.build.rules.get(call.func.id)
        if rule is None:
            raise UsageError(f"%build: no rule named {call.func.id!r}")
        ns = self.shell.user_ns
        try:
            args = [eval(compile(ast.Expression(a), "<target>", "eval"), ns) for a in call.args]
            kwargs = {k.arg: eval(compile(ast.Expression(k.value), "<target>", "eval"), ns) for k in call.keywords}
        except Exception as e:  # the user's argument expressions: any error is theirs, in one line
            raise UsageError(f"%build: the arguments of {target!r} failed: {type(e).__name__}: {e}") from None
        try:
            return rule.task(*args, **kwargs)
        except NbbuildError as e:
            raise UsageError(str(e)) from None

    @line_magic
    def build(self, line: str) -> Any:
        """Bring targets up to date, running only what is stale, and bind their outputs.

        %build TARGET [TARGET ...] [--force] [--dry-run] [-j N]

        TARGET        a name a rule produces, a rule's name, or a call of a parametric rule
                      such as model(alpha=0.1) (its value is the cell's result)
        --force       run the targets themselves again (what they read is still only checked)
        --dry-run     say what would run and why; run nothing
        -j N          run up to N rules at once (threads; rule bodies must be thread-safe)

        Prints one line: how many rules ran, were reused and failed, the time taken and the
        time saved. A reused target shows again what it printed and displayed when it ran.
        """
        words = _split_targets(line)
        targets, jobs, force, dry, it = [], None, False, False, iter(words)
        for w in it:
            if w == "--force":
                force = True
            elif w == "--dry-run":
                dry = True
            elif w in ("-j", "--jobs"):
                jobs = next(it, "")
                if not jobs.isdigit() or int(jobs) < 1:
                    raise UsageError(f"%build: -j takes a whole number of at least 1, not {jobs!r}")
            elif w.startswith("-"):
                raise UsageError(f"%build: unknown option {w!r}; usage: %build TARGET [TARGET ...] "
                                 "[--force] [--dry-run] [-j N]")
            else:
                targets.append(w)
        if not targets:
            raise UsageError("%build: name at least one target: %build TARGET [TARGET ...]")
        tasks = [self._task(t) for t in targets]
        if dry:
            plan = self.state.build.plan(*tasks)
            for task, reason in plan:
                print(label(f"would run: {task} — {reason}"))
            if not plan:
                print("nothing would run: everything is up to date")
            return None
        workers = self.state.build.workers
        if jobs:
            self.state.build.workers = int(jobs)
        try:
            values = self._build(tasks, summary=True, force=force)
        finally:
            self.state.build.workers = workers
        calls = [v for t, v in zip(tasks, values) if t.rule.name in self.state.parametric]
        return calls[0] if len(tasks) == 1 and calls else None

    @line_magic
    def nbbuild(self, line: str) -> None:
        """Look at the build; nothing runs.

        %nbbuild status            every rule: up to date / stale / never built / failed / not
                                   stored, its last run time, its stored size, and why
        %nbbuild why TARGET        why TARGET is stale, in words, or that it is up to date
        %nbbuild graph [TARGET]    the rules as a tree: each rule above what it reads
        %nbbuild store             where the store is, its size against its quota
        %nbbuild store --quota SIZE   set the quota ('5 GB', '500MB', bytes, 'unlimited'); kept
                                   in the store for later sessions (NBBUILD_QUOTA comes first)
        %nbbuild store --min-free SIZE   free disk space to keep: values are evicted below it
        %nbbuild store --eviction gdsf|lru   what goes first: gdsf weighs recompute time, size
                                   and use (default); lru the least recently used
        %nbbuild store gc          evict now, down to the quota; prune old traces
        %nbbuild store clear       empty the store: every rule runs again
        %nbbuild metrics           store counters (hits, misses, evictions, bytes) and this
                                   session's builds, tasks run and reused, time spent and saved

        TARGET is a name a rule produces, a rule's name, or a call such as model(alpha=0.1).
        """
        words = _split_targets(line)
        command, rest = (words[0], words[1:]) if words else ("", [])
        b = self.state.build
        if command == "status" and not rest:
            print(table(snapshot(b, self.state.static()), [r.task().key for r in self._plain_rules()]))
        elif command == "why" and len(rest) == 1:
            print(label(b.why(self._task(rest[0]))))
        elif command == "graph" and len(rest) <= 1:
            targets = [self._task(rest[0])] if rest else None
            print(tree(snapshot(b, self.state.static(), targets)))
        elif command == "store":
            self._store(rest)
        elif command == "metrics" and not rest:
            self._metrics()
        else:
            said = f"%nbbuild: {line.strip()!r}? " if line.strip() else ""
            raise UsageError(f"{said}usage: {_NBBUILD_USAGE}")

    def _plain_rules(self) -> list:
        return [r for name, r in self.state.build.rules.items() if name not in self.state.parametric]

    def _store(self, words: list[str]) -> None:
        b = self.state.build
        action, it = None, iter(words)
        usage = "usage: %nbbuild store [--quota SIZE] [--min-free SIZE] [--eviction gdsf|lru] [gc | clear]"
        for w in it:
            option, _, given = w.partition("=")
            if option in ("--quota", "--min-free", "--eviction"):
                value = given or next(it, "")
                try:
                    if option == "--quota":
                        b.set_quota(value)
                    elif option == "--min-free":
                        b.store.min_free = parse_size(value) or 0
                    elif value.lower() in EVICTIONS:
                        b.store.policy = value.lower()
                    else:
                        raise ValueError(f"eviction policy {value!r} not known: use gdsf or lru")
                except (ValueError, NbbuildError) as e:
                    raise UsageError(f"%nbbuild store: {e}") from None
            elif w in ("gc", "clear") and action is None:
                action = w
            else:
                raise UsageError(f"%nbbuild store: {w!r}? {usage}")
        if action == "gc":
            print(f"evicted {b.gc()} values")
        elif action == "clear":
            b.clear()
            print("store cleared: every rule runs again when built")
        stats = b.store.stats()
        print(f"store {stats['path']}: {_usage(stats)}; {stats['values']} values ({stats['value_files']} as files), "
              f"{stats['traces']} traces\n"
              f"quota {b.store.quota_source}; eviction {stats['policy']}; disk {size_text(stats['free_bytes'])} free, "
              f"floor {size_text(stats['min_free_bytes'] or 0)}")

    def _metrics(self) -> None:
        b, totals = self.state.build, self.state.totals
        stats = b.store.stats()
        asked = stats["hits"] + stats["misses"]
        rate = f" ({100 * stats['hits'] / asked:.0f}% hits)" if asked else ""
        trouble = ", ".join(f"{stats[k]} {k.replace('_', ' ')}" for k in ("damaged", "write_failures") if stats[k])
        print(f"store      {_usage(stats)}; {stats['values']} values, {stats['traces']} traces\n"
              f"reuse      {stats['hits']} hits, {stats['misses']} misses{rate}, {stats['evictions']} evictions"
              f" ({stats['policy']})\n"
              f"traffic    {size_text(stats['bytes_written'])} written, {size_text(stats['bytes_read'])} read"
              f"{'; ' + trouble if trouble else ''}\n"
              f"session    {totals['builds']} builds: ran {totals['ran']}, reused {totals['reused']}, "
              f"failed {totals['failed']}; {seconds_text(totals['seconds'])} spent, "
              f"{seconds_text(totals['saved'])} saved")

    # ------------------------------------------------------------ helpers

    def _build(self, tasks: list, summary: bool, force: bool = False) -> list[dict]:
        b = self.state.build
        before = b.report
        try:
            values = b.build(*tasks, force=force)
        except CycleError as e:
            raise UsageError(label(str(e))) from None
        except KeyboardInterrupt as e:
            self._show_own_frames(e)
            raise UsageError("build interrupted: nothing it was running was stored; what finished is kept, "
                             "and the next %build goes on from there") from None
        except BuildError as e:
            if e.__cause__ is not None:
                self._show_own_frames(e.__cause__)
            if b.report is not before:
                self.state.count(tasks, b.report)
                if summary:
                    print(label(str(b.report)))
            raise UsageError(label(str(e))) from None
        if summary and b.report is not None:
            print(label(str(b.report)))
        self._say_unstored(tasks, values)
        for task, value in zip(tasks, values):
            if task.rule.name not in self.state.parametric:
                self.shell.user_ns.update({k: v for k, v in value.items() if k != LAST})
        return values

    def _show_own_frames(self, error: BaseException) -> None:
        """The traceback of a rule's error or interrupt from the cell's frames on, not the engine's."""
        tb = error.__traceback__
        while tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("nbbuild"):
            tb = tb.tb_next
        if tb is not None:
            self.shell.showtraceback((type(error), error, tb))

    def _say_unstored(self, tasks: list, values: list) -> None:
        """A value that cannot be stored is rebuilt after every restart: say so, and say which
        of the cell's names is to blame when it is a target."""
        report = self.state.build.report
        unstored = {t.task: t.unstored for t in report.tasks if t.unstored} if report is not None else {}
        for text, reason in unstored.items():
            culprits = []
            for task, value in zip(tasks, values):
                if repr(task) == text and isinstance(value, dict):
                    culprits = [k for k, v in value.items() if k != LAST and not _picklable(v)]
            if culprits or "pickle" in reason:
                what = f"{', '.join(culprits)} cannot be pickled" if culprits else reason
                advice = "keep such objects inside a function, or `del` them at the end of the cell"
            elif "quota" in reason:
                what, advice = reason, "raise the quota (%nbbuild store --quota SIZE) to keep it"
            else:
                what, advice = reason, "free disk space, then build again to store it"
            print(f"nbbuild: {label(text)} is not stored ({what}): it runs again after a restart; {advice}",
                  file=sys.stderr)

    def _say_stale(self, name: str) -> None:
        self.state.say_stale(self.state.dependents(name))

def _picklable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
        return True
    except Exception:  # pickling runs the object's own code: anything may fail
        return False


def _usage(stats: dict) -> str:
    size, quota = stats["size_bytes"], stats["quota_bytes"]
    if not quota:
        return f"{size_text(size)} (no quota)"
    return f"{size_text(size)} of {size_text(quota)} ({100 * size / quota:.0f}%)"


def load_ipython_extension(shell: Any) -> None:
    state = getattr(shell, "_nbbuild_state", None)
    if state is None:
        path = os.environ.get("NBBUILD_DIR") or os.path.join(os.getcwd(), ".nbbuild")
        try:
            state = shell._nbbuild_state = NotebookState(shell, path)
        except NbbuildError as e:
            raise UsageError(f"nbbuild: {e}") from None
    shell.user_ns[FETCH] = state.fetch
    shell.user_ns[CAPTURE] = state.capture
    for event in ("pre_run_cell", "post_run_cell"):
        if getattr(state, event) not in shell.events.callbacks[event]:
            shell.events.register(event, getattr(state, event))
    shell.register_magics(NbbuildMagics(shell, state))


def unload_ipython_extension(shell: Any) -> None:
    state = getattr(shell, "_nbbuild_state", None)
    for event in ("pre_run_cell", "post_run_cell"):
        if state is not None and getattr(state, event) in shell.events.callbacks[event]:
            shell.events.unregister(event, getattr(state, event))
    magics = shell.magics_manager.magics
    magics["cell"].pop("rule", None)
    magics["line"].pop("build", None)
    magics["line"].pop("nbbuild", None)
