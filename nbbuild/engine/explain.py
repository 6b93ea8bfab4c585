"""Explaining a build without running it: why a task is stale, what a build would run, each task's
status, and what a task read.

Contract:
- `why(ctx, task)`: "<task> is up to date", or "<task> is stale: <reason>". Reasons name the
  first difference found, walking the newest matching trace in recorded order: "never built", "code
  of clean changed", "function helper changed", "global threshold changed", "dependency raw()
  changed", "dependency raw() is stale (...)", "file data.csv changed" or "is missing",
  "environment variable HOME changed" (set, unset or another value), "the environment changed",
  "file out.csv it wrote is missing and no copy of it is stored" (its copy was evicted: outputs.py);
  package version changes are added in brackets. An older trace that still matches (a reverted
  edit) makes the task up to date. Files it wrote are named after "is up to date": those its last
  build in this process put back ("; its last build restored file out.csv from the store"), and
  those missing or changed now, which the next build puts back ("; file out.csv it wrote is
  missing: building it restores it from the store"). So are the environment variables it set
  (environment.py): "; its last build set environment variable X again as its run left it", or
  "; environment variable X it set is unset: building it sets it again" (or "is set", "changed").
  A variable a task set itself is not a change of its input.
- `plan(ctx, tasks)`: (task repr, reason) of every task that building them may run, dependencies
  first. Early cutoff may yet spare some of them.
- `status(ctx, task)`: a `TaskStatus`: `state` a `Standing`, one of "up to date", "stale", "never built",
  "failed" (its last build in this process failed), "not stored" (up to date, but its value is
  gone or could not be stored: it runs again when needed); the reason in words; the last run's
  seconds; the stored value's size in bytes (None when not stored). `statuses(ctx, tasks)` is
  the status of each, sharing the work (what one task's dependencies are is found out once).
- `inputs(ctx, task)`: the tasks and files the newest trace of the task read, in order;
  `outputs(ctx, task)`: the files it wrote.
- `known(ctx, rule)`: the rule's tasks that have traces or were built in this process.
- `ctx` is the Build's engine context (engine/context.py): nothing else of the Build is read.
- `Explaining`, Build's face onto these (mixed in), asks them of a Build's targets with its
  `context`: `b.why(target)`, `b.plan(*targets)`, `b.status`, `b.statuses`, `b.inputs`, `b.outputs`,
  `b.known_tasks(rule)`.
- The traces are walked by the rebuilder (rebuild.walk: the same walk the scheduler verifies
  with), with a stack of its own, not by recursion: a chain of any depth is explained at the
  default recursion limit. A reason through stale dependencies is put into words when asked.
Nothing here runs a rule, writes to the store, or loads a value.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, TypeAlias

from . import environment, outputs as _outputs
from .context import EngineContext
from .inputs import describe as input_describe, digest as input_digest, for_targets_only
from .files import short_path
from .rule import Rule, Target
from .task import Task
from .rebuild import Rebuilder, Walk, walk
from .state import Word
from .trace import FILE_PREFIX, INPUT_PREFIX, MISSING, Group, Trace

__all__ = ["TaskStatus", "Standing", "why", "plan", "status", "statuses", "inputs", "outputs", "known", "Explaining"]

class Standing(Word):
    """A task's state as `status` tells it (TaskStatus.state): the words the views show and send."""
    UP_TO_DATE = "up to date"
    STALE = "stale"
    NEVER_BUILT = "never built"
    FAILED = "failed"           # its last build in this process failed
    NOT_STORED = "not stored"   # up to date, but its value is not stored: it runs again when needed


@dataclass(frozen=True)
class TaskStatus:
    task: str
    state: Standing
    reason: str
    seconds: float | None
    size: int | None


# A memo maps task key -> (reason (str or _Stale) or None when up to date, value hash when up to date, seconds of
# the trace that decided, that trace when up to date). Dependencies are inserted before their dependents.
class _Stale:
    """The reason "dependency <dep> is stale (<its reason>)", put into words only when asked
    (`_text`): down a deep chain each task's reason holds all those below it, and written out for
    every task they would take space and time of the square of the depth."""

    __slots__ = ("dep", "inner")

    def __init__(self, dep: Task, inner: Reason):
        self.dep, self.inner = dep, inner


Reason: TypeAlias = "str | _Stale"


def _text(reason: Any) -> Any:
    """A reason in words (None stays None)."""
    if type(reason) is not _Stale:
        return reason
    parts: list[str] = []
    while type(reason) is _Stale:
        parts.append(f"dependency {reason.dep!r} is stale (")
        reason = reason.inner
    return "".join(parts) + reason + ")" * len(parts)


Result = tuple["Reason | None", str | None, float | None, Trace | None]   # see Memo
Memo = dict[str, Result]


def why(ctx: EngineContext, task: Task) -> str:
    memo: Memo = {}
    reason = _explain(ctx, [task], memo)[0]
    if reason is not None:
        return f"{task!r} is stale: {reason}"
    notes = _notes(ctx, task, memo[task.key][3])
    if not _stored(ctx, task, memo[task.key][1]):
        return f"{task!r} is up to date, but its value is no longer stored: it runs again when needed" + notes
    return f"{task!r} is up to date" + notes


def _notes(ctx: EngineContext, task: Task, trace: Trace | None) -> str:
    """What became, or becomes, of the files the task wrote (put back from the store) and of the
    environment variables it set (set again)."""
    notes = []
    restored = ctx.restored.get(task.key)
    removed = {path for path, content, _ in trace.outputs if content == MISSING} if trace is not None else set()
    if restored and (put := [p for p in restored if p not in removed]):
        notes.append(f"its last build restored {_files(put)} from the store")
    if restored and (gone := [p for p in restored if p in removed]):
        notes.append(f"its last build removed {_files(gone)} again, as its run did")
    if trace is not None and trace.outputs:
        pending = [p for p in _outputs.look(ctx.files.hash, ctx.store, trace)[1] if p not in removed]
        if len(pending) == 1:
            what = "is missing" if ctx.files.hash(pending[0]) == MISSING else "changed"
            notes.append(f"{_files(pending)} it wrote {what}: building it restores it from the store")
        elif pending:
            notes.append(f"{_files(pending)} it wrote are missing or changed: building it restores them "
                         "from the store")
    names = ctx.environ_restored.get(task.key)
    if names:
        notes.append(f"its last build set {_variables(names)} again as its run left it")
    environ = trace.environ if trace is not None else ()
    names = environment.pending(environ) if environ else []
    if len(names) == 1:
        now = "is unset" if names[0] not in os.environ else "is set" if dict(environ)[names[0]] is None \
            else "changed"
        notes.append(f"{_variables(names)} it set {now}: building it sets it again")
    elif names:
        notes.append(f"{_variables(names)} it set changed: building it sets them again")
    return "".join("; " + n for n in notes)


def _variables(names: list[str]) -> str:
    return ("environment variable " if len(names) == 1 else "environment variables ") + ", ".join(names)


def _files(paths: list[str]) -> str:
    return ("file " if len(paths) == 1 else "files ") + ", ".join(short_path(p) for p in paths)


def plan(ctx: EngineContext, tasks: list[Task]) -> list[tuple[str, str]]:
    memo: Memo = {}
    _explain(ctx, tasks, memo)
    return [(ctx.tasks[key]._repr if key in ctx.tasks else key, _text(reason))
            for key, (reason, *_) in memo.items() if reason is not None]


def status(ctx: EngineContext, task: Task) -> TaskStatus:
    return statuses(ctx, [task])[0]


def statuses(ctx: EngineContext, tasks: list[Task]) -> list[TaskStatus]:
    memo: Memo = {}
    reasons = _explain(ctx, tasks, memo)
    return [_status(ctx, task, reason, memo) for task, reason in zip(tasks, reasons)]


def _status(ctx: EngineContext, task: Task, reason: str | None, memo: Memo) -> TaskStatus:
    _, digest, seconds, _ = memo[task.key]
    failure = ctx.failures.get(task.key)
    if failure is not None:
        return TaskStatus(repr(task), Standing.FAILED, failure, seconds, None)
    if reason == "never built":
        return TaskStatus(repr(task), Standing.NEVER_BUILT, reason, None, None)
    if reason is not None:
        return TaskStatus(repr(task), Standing.STALE, reason, seconds, None)
    assert digest is not None       # up to date: the memo holds its value hash
    size = ctx.store.value_size(digest) if task.rule.policy == "persist" else ctx.memory.size(digest)
    if not _stored(ctx, task, digest):
        return TaskStatus(repr(task), Standing.NOT_STORED, "its value is not stored: it runs again when needed",
                          seconds, None)
    return TaskStatus(repr(task), Standing.UP_TO_DATE, "up to date", seconds, size)


def inputs(ctx: EngineContext, task: Task) -> tuple[list[Task], list[str]]:
    trace = ctx.store.any_trace(task.key)
    if trace is None:
        entry = ctx.verified.entries.get(task.key)
        trace = entry[0] if entry is not None else None
    if trace is None:
        return [], []
    keys, files = trace.split()
    tasks = [t for t in (ctx.task_for_key(k) for k in dict.fromkeys(keys)) if t is not None]
    return tasks, [path for path, _ in files]


def outputs(ctx: EngineContext, task: Task) -> list[str]:
    trace = ctx.store.any_trace(task.key)
    if trace is None:
        entry = ctx.verified.entries.get(task.key)
        trace = entry[0] if entry is not None else None
    return [path for path, content, _ in trace.outputs if content != MISSING] if trace is not None else []


def known(ctx: EngineContext, rule: Rule) -> list[Task]:
    prefix = rule.name + "/"
    keys = [k for k in ctx.store.traces_index() if k.startswith(prefix)]
    keys += [k for k in ctx.store.memory_traces if k.startswith(prefix)]
    keys += [k for k in ctx.verified.hashes if k.startswith(prefix)]
    tasks = (ctx.task_for_key(k) for k in dict.fromkeys(keys))
    return sorted((t for t in tasks if t is not None and t.rule is rule), key=repr)


def _stored(ctx: EngineContext, task: Task, digest: str | None) -> bool:
    if digest is None or digest.startswith("u:"):
        return False
    if digest in ctx.memory:
        return True
    return task.rule.policy == "persist" and ctx.store.has_value(digest)


def _explain(ctx: EngineContext, tasks: list[Task], memo: Memo) -> list[str | None]:
    for task in tasks:
        ctx.tasks.setdefault(task.key, task)
    ctx.store.refresh()
    rb = Rebuilder(ctx)       # versions, once per rule; what inputs are now
    reasons = [_text(_why(ctx, rb, task, memo)[0]) for task in tasks]
    if any(r is not None for r in reasons) and ctx.store.look_in_shared():
        memo.clear()          # traces came from the shared tier: what a build would reuse now
        reasons = [_text(_why(ctx, rb, task, memo)[0]) for task in tasks]
    return reasons


class _Walk:
    """Explaining one task: the rebuilder's walk over its traces (rebuild.walk), with the reason
    of each trace's first mismatch. `at`: where in the group being asked it stopped for a
    dependency that is explained first."""

    __slots__ = ("task", "target", "steps", "ask", "at", "reasons", "last", "result")

    def __init__(self, task: Task, target: bool):
        self.task, self.target = task, target
        self.steps: Walk | None = None
        self.ask: Group | Trace | None = None
        self.at = 0
        self.reasons: list[Reason] = []
        self.last: float | None = None
        self.result: Result | None = None

    def answer(self, reason: Reason | None) -> None:
        """Tell the walk whether what it asked matches (no reason); move on to what it asks next."""
        if reason is not None:
            self.reasons.append(reason)
        assert self.steps is not None       # asked: walking
        try:
            self.ask = self.steps.send(reason is None)
        except StopIteration as done:
            self.finish(done.value[0])

    def finish(self, trace: Trace | None) -> None:
        # the newest trace's reason is the one to give, unless an older trace still matches
        self.result = (None, trace.result, trace.seconds, trace) if trace is not None \
            else (self.reasons[0], None, self.last, None)


def _why(ctx: EngineContext, rb: Rebuilder, task: Task, memo: Memo, target: bool = True) -> Result:
    """The task's memo entry, its dependencies' first: walked with a stack of `_Walk`s, not by
    recursion, so that a chain of any depth is explained at any recursion limit."""
    if task.key in memo:
        return memo[task.key]
    stack = [_start(ctx, rb, task, memo, target)]
    while stack:
        w = stack[-1]
        dep = _advance(ctx, rb, w, memo)
        if dep is not None:
            stack.append(_start(ctx, rb, dep, memo, False))
            continue
        stack.pop()
        del memo[w.task.key]          # re-inserted last: the memo lists dependencies first
        memo[w.task.key] = w.result   # type: ignore[assignment]
    return memo[task.key]


def _start(ctx: EngineContext, rb: Rebuilder, task: Task, memo: Memo, target: bool) -> _Walk:
    memo[task.key] = ("it depends on itself", None, None, None)   # until known; a cycle reads this
    w = _Walk(task, target)
    rule = task.rule
    traces = ctx.store.traces(task.key, rule.policy == "persist") or ctx.store.memory_traces.get(task.key, [])
    w.last = traces[0].seconds if traces else None
    if rule.policy == "none":
        w.result = ("its policy is 'none': it runs every build", None, w.last, None)
    elif not traces:
        w.result = ("never built", None, None, None)
    else:
        v = rb.version(rule)
        if not any(t.version == v.version for t in traces):
            w.result = (_version_change(rule.name, traces[0], v), None, w.last, None)
        else:
            w.steps = walk(traces, v.version, {})
            try:
                w.ask = next(w.steps)
            except StopIteration as done:
                w.finish(done.value[0])
    return w


def _advance(ctx: EngineContext, rb: Rebuilder, w: _Walk, memo: Memo) -> Task | None:
    """Answer what the walk asks until it is done (None), or until a dependency must be
    explained first (that task)."""
    while w.result is None:
        ask = w.ask
        if isinstance(ask, tuple):
            reason, dep = _group(ctx, rb, w, ask, memo)
            if dep is not None:
                return dep
            w.at = 0
        else:    # a trace that matches but for what it wrote, which differs now and is put back unless its copy is gone
            assert ask is not None      # no result yet: the walk asks something
            reason = _outputs.look(ctx.files.hash, ctx.store, ask)[0] if ask.outputs else None
        w.answer(reason)
    return None


def _group(ctx: EngineContext, rb: Rebuilder, w: _Walk, group: Group, memo: Memo) -> tuple[Reason | None, Task | None]:
    """(why the recorded group differs now, or None; a dependency to explain before going on)."""
    for i in range(w.at, len(group)):
        key, recorded = group[i]
        if key.startswith(FILE_PREFIX):
            path = key[len(FILE_PREFIX):]
            now = ctx.files.hash(path)
            if now != recorded:
                return f"file {short_path(path)} {'is missing' if now == MISSING else 'changed'}", None
            continue
        if key.startswith(INPUT_PREFIX):
            if (w.target or not for_targets_only(key)) and input_digest(key, rb.owner(w.task.key)) != recorded:
                return input_describe(key), None
            continue
        dep = ctx.task_for_key(key)
        if dep is None:
            return f"rule {key.partition('/')[0]} it used is gone or changed its arguments", None
        found = memo.get(dep.key)
        if found is None:
            w.at = i
            return None, dep
        if found[0] is not None:
            return _Stale(dep, found[0]), None
        if found[1] != recorded:
            return f"dependency {dep!r} changed", None
    return None, None


def _version_change(name: str, old: Any, new: Any) -> str:
    before, after = dict(old.parts), dict(new.parts)
    said = []
    for label in list(after) + [k for k in before if k not in after]:
        if before.get(label) == after.get(label):
            continue
        kind, _, what = label.partition(":")
        if label == "code":
            said.append(f"code of {name} changed")
        elif label.startswith("code:"):
            said.append(f"defaults or closure of {name} changed")
        elif kind == "fn":
            said.append(f"function {what.split(':')[0]} changed")
        elif kind == "cls":
            said.append(f"class {what.split('.')[0].split(':')[0]} changed")
        elif kind == "global":
            word = "new" if label not in before else "no longer read" if label not in after else "changed"
            said.append(f"global {what.split(':')[0]} {word}")
        else:
            said.append(f"{label} changed")
    said = list(dict.fromkeys(said)) or [f"code of {name} changed"]
    pk_old, pk_new = dict(old.packages), dict(new.packages)
    for pkg, ver in pk_new.items():
        if pk_old.get(pkg, ver) != ver:
            said.append(f"(package {pkg} {pk_old[pkg]} → {ver})")
    return ", ".join(said)


class Explaining:
    if TYPE_CHECKING:       # Build's, which mixes this in (build.py)
        context: EngineContext
        def _target(self, t: object) -> Task: ...

    def why(self, target: Target) -> str:
        """Why the target is stale, in words, or that it is up to date; nothing runs."""
        return why(self.context, self._target(target))

    def plan(self, *targets: Target) -> list[tuple[str, str]]:
        """What building the targets would run, and why, dependencies first; nothing runs. A task
        below a stale one may yet be spared by early cutoff: the plan says what may run."""
        return plan(self.context, [self._target(t) for t in targets])

    def status(self, target: Target) -> TaskStatus:
        """The target's state (up to date, stale, never built, failed, not stored), why, its last
        run time and its stored size; nothing runs."""
        return status(self.context, self._target(target))

    def statuses(self, targets: Sequence[Target]) -> list[TaskStatus]:
        """`status` of each target, the work shared: for a whole graph at once."""
        return statuses(self.context, [self._target(t) for t in targets])

    def inputs(self, target: Target) -> tuple[list[Task], list[str]]:
        """(tasks, file paths) the target read when it last ran, in order; empty if it never ran."""
        return inputs(self.context, self._target(target))

    def outputs(self, target: Target) -> list[str]:
        """The files the target wrote when it last ran (outputs.py); empty if it never ran."""
        return outputs(self.context, self._target(target))

    def known_tasks(self, rule: Rule) -> list[Task]:
        """The rule's tasks that were built before (traces) or in this process, by repr."""
        return known(self.context, rule)
