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
- `status(ctx, task)`: a `TaskStatus`: `state` one of "up to date", "stale", "never built",
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
Nothing here runs a rule, writes to the store, or loads a value.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from . import environment, outputs as _outputs
from .context import EngineContext
from .inputs import describe as input_describe, digest as input_digest, for_targets_only
from .files import short_path
from .rule import Rule
from .task import Task
from .version import rule_version
from .trace import FILE_PREFIX, INPUT_PREFIX, MISSING

__all__ = ["TaskStatus", "why", "plan", "status", "statuses", "inputs", "outputs", "known", "Explaining"]

STATES = ("up to date", "stale", "never built", "failed", "not stored")


@dataclass(frozen=True)
class TaskStatus:
    task: str
    state: str
    reason: str
    seconds: float | None
    size: int | None


# A memo maps task key -> (reason or None when up to date, value hash when up to date, seconds of
# the trace that decided, that trace when up to date). Dependencies are inserted before their dependents.
Memo = dict[str, tuple[str | None, str | None, float | None, Any]]


def why(ctx: EngineContext, task: Task) -> str:
    memo: Memo = {}
    reason = _explain(ctx, [task], memo)[0]
    if reason is not None:
        return f"{task!r} is stale: {reason}"
    notes = _notes(ctx, task, memo[task.key][3])
    if not _stored(ctx, task, memo[task.key][1]):
        return f"{task!r} is up to date, but its value is no longer stored: it runs again when needed" + notes
    return f"{task!r} is up to date" + notes


def _notes(ctx: EngineContext, task: Task, trace: Any) -> str:
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
    names = environment.pending(trace.environ) if trace is not None and trace.environ else []
    if len(names) == 1:
        now = "is unset" if names[0] not in os.environ else "is set" if dict(trace.environ)[names[0]] is None \
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
    return [(ctx.tasks[key]._repr if key in ctx.tasks else key, reason)
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
        return TaskStatus(repr(task), "failed", failure, seconds, None)
    if reason == "never built":
        return TaskStatus(repr(task), "never built", reason, None, None)
    if reason is not None:
        return TaskStatus(repr(task), "stale", reason, seconds, None)
    size = ctx.store.value_size(digest) if task.rule.policy == "persist" else ctx.memory.size(digest)
    if not _stored(ctx, task, digest):
        return TaskStatus(repr(task), "not stored", "its value is not stored: it runs again when needed",
                          seconds, None)
    return TaskStatus(repr(task), "up to date", "up to date", seconds, size)


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
    versions: dict[Rule, Any] = {}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))
    try:
        return [_why(ctx, task, memo, versions)[0] for task in tasks]
    finally:
        sys.setrecursionlimit(limit)


def _why(ctx: EngineContext, task: Task, memo: Memo, versions: dict,
         target: bool = True) -> tuple[str | None, str | None, float | None, Any]:
    if task.key in memo:
        return memo[task.key]
    memo[task.key] = ("it depends on itself", None, None, None)   # until known; a cycle reads this
    rule = task.rule
    traces = ctx.store.traces(task.key, rule.policy == "persist") or ctx.store.memory_traces.get(task.key, [])
    last = traces[0].seconds if traces else None
    result: tuple[str | None, str | None, float | None, Any]
    if rule.policy == "none":
        result = ("its policy is 'none': it runs every build", None, last, None)
    elif not traces:
        result = ("never built", None, None, None)
    else:
        v = versions.get(rule) or versions.setdefault(rule, rule_version(rule.fn, ctx.is_engine_object))
        matching = [t for t in traces if t.version == v.version]
        if not matching:
            result = (_version_change(rule.name, traces[0], v), None, last, None)
        else:
            # the newest trace's reason is the one to give, unless an older trace still matches
            reasons = []
            for tr in matching:
                reason = _why_trace(ctx, tr, memo, versions, target)
                if reason is None:
                    result = (None, tr.result, tr.seconds, tr)
                    break
                reasons.append(reason)
            else:
                result = (reasons[0], None, last, None)
    del memo[task.key]          # re-inserted last: the memo lists dependencies first
    memo[task.key] = result
    return result


def _why_trace(ctx: EngineContext, tr: Any, memo: Memo, versions: dict, target: bool = True) -> str | None:
    for group in tr.deps:
        for key, recorded in group:
            if key.startswith(FILE_PREFIX):
                path = key[len(FILE_PREFIX):]
                now = ctx.files.hash(path)
                if now != recorded:
                    return f"file {short_path(path)} {'is missing' if now == MISSING else 'changed'}"
                continue
            if key.startswith(INPUT_PREFIX):
                if (target or not for_targets_only(key)) and input_digest(key, (ctx.store.path, tr.key)) != recorded:
                    return input_describe(key)
                continue
            dep = ctx.task_for_key(key)
            if dep is None:
                return f"rule {key.partition('/')[0]} it used is gone or changed its arguments"
            reason, h, *_ = _why(ctx, dep, memo, versions, target=False)
            if reason is not None:
                return f"dependency {dep!r} is stale ({reason})"
            if h != recorded:
                return f"dependency {dep!r} changed"
    if tr.outputs:     # files it wrote that differ now are put back, unless their copy is gone
        return _outputs.look(ctx.files.hash, ctx.store, tr)[0]
    return None


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
    def why(self, target: Any) -> str:
        """Why the target is stale, in words, or that it is up to date; nothing runs."""
        return why(self.context, self._target(target))

    def plan(self, *targets: Any) -> list[tuple[str, str]]:
        """What building the targets would run, and why, dependencies first; nothing runs. A task
        below a stale one may yet be spared by early cutoff: the plan says what may run."""
        return plan(self.context, [self._target(t) for t in targets])

    def status(self, target: Any) -> TaskStatus:
        """The target's state (up to date, stale, never built, failed, not stored), why, its last
        run time and its stored size; nothing runs."""
        return status(self.context, self._target(target))

    def statuses(self, targets: list[Any]) -> list[TaskStatus]:
        """`status` of each target, the work shared: for a whole graph at once."""
        return statuses(self.context, [self._target(t) for t in targets])

    def inputs(self, target: Any) -> tuple[list[Task], list[str]]:
        """(tasks, file paths) the target read when it last ran, in order; empty if it never ran."""
        return inputs(self.context, self._target(target))

    def outputs(self, target: Any) -> list[str]:
        """The files the target wrote when it last ran (outputs.py); empty if it never ran."""
        return outputs(self.context, self._target(target))

    def known_tasks(self, rule: Rule) -> list[Task]:
        """The rule's tasks that were built before (traces) or in this process, by repr."""
        return known(self.context, rule)
