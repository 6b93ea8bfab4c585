"""The Build facade: a store, a scheduler and an executor composed; the report; `why`.

Contract:
- `Build(path, quota=, workers=)` opens (or creates) the store at `path`; also a context manager
  that closes it. `@b.rule` / `@b.rule(policy=..., name=...)` registers rules by name (a rule of
  the same name replaces the earlier one, as re-running a notebook cell does).
- `b.build(*targets)` brings targets (Tasks, or rules taking no arguments) up to date concurrently
  and returns their values. Other targets still finish when one fails; then the first failure is
  raised (BuildError, or CycleError) with every failure in `.errors`. Inside a running rule body
  it is a tracked fetch.
- `b.report` describes the last build; `b.why(task)` explains, without running anything, why a
  task is stale or that it is up to date.
- `b.attachment(task)`: what the run behind the task's current value attached (`trace.attach`),
  kept beside the value and outside its hash (the notebook keeps a cell's displayed output there).
- Values live in memory too (bounded), so a no-op rebuild in the same process loads nothing; a
  remembered value changed in place since is noticed and replaced by the stored one.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

from . import files, hashing
from .clean import CleanSet
from .errors import BuildError, RuleError
from .eviction import evict, parse_size
from .executors import HelperPool
from .rule import Rule, Task, rule_version, resolve_target
from .scheduler import DONE, Scheduler
from .store import Store
from .trace import FILE_PREFIX, MISSING, current

__all__ = ["Build", "BuildReport", "TaskReport"]

log = logging.getLogger("nbbuild")
_MEMORY_BYTES = 1 << 30          # values kept in memory between builds, by serialized size
_MEMORY_VALUES = 100_000
_IMMUTABLE = (int, float, str, bytes, bool, type(None), complex, frozenset)
_ABSENT = object()
_PATIENCE = 5.0


class TaskReport(NamedTuple):
    task: str
    outcome: str          # executed | verified | constructed | failed | skipped
    seconds: float        # run time, or for reused tasks the run time they saved
    unstored: str = ""


@dataclass(frozen=True)
class BuildReport:
    """One build, described with task reprs: `executed` ran, `reused` were up to date (of them,
    `constructed` came from an older trace: an edit was reverted), `failed` raised, `skipped` were
    not built because a dependency failed, `unstored` ran but their values could not be stored.
    `saved_seconds` adds up the recorded run times of the reused tasks."""

    executed: list[str]
    reused: list[str]
    failed: list[str]
    skipped: list[str]
    unstored: list[str]
    constructed: list[str]
    seconds: float
    saved_seconds: float
    rows: tuple = field(default=((), (), (), {}), repr=False, compare=False)

    @functools.cached_property
    def tasks(self) -> tuple[TaskReport, ...]:
        """Every task the build checked, in the order they finished."""
        texts, outcomes, durations, notes = self.rows
        return tuple(TaskReport(t, o, s, notes.get(t, "")) for t, o, s in zip(texts, outcomes, durations))

    def __str__(self) -> str:
        s = (f"ran {len(self.executed)}, reused {len(self.reused)}, failed {len(self.failed)}"
             f" in {self.seconds:.2f} s (saved {self.saved_seconds:.2f} s)")
        if self.unstored:
            s += f"; not stored: {', '.join(self.unstored)}"
        return s


class Build:
    def __init__(self, path: str | os.PathLike = ".nbbuild", quota: int | str | None = None,
                 workers: int | None = None):
        try:
            quota_bytes = parse_size(quota)
        except ValueError as e:
            raise RuleError(str(e)) from None
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise RuleError(f"workers={workers!r}: give a whole number of at least 1")
        self.store = Store(path, quota_bytes)
        self.workers = workers
        self.rules: dict[str, Rule] = {}
        self.report: BuildReport | None = None
        self._values: OrderedDict[str, Any] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._values_bytes = 0
        self._tasks: dict[str, Task] = {}
        self._attachments: dict[str, tuple[str, Any]] = {}   # task key -> (value hash, attachment)
        self._files = files.FileHasher()     # stat entries come from the store at the first build
        self._clean = CleanSet()
        self._generation = self.store.generation
        self._pool = HelperPool()
        self._lock = threading.RLock()          # one build at a time
        self._values_lock = threading.Lock()    # taken from any worker thread during a build
        files.install_hook()

    # ------------------------------------------------------------ rules

    def rule(self, fn: Callable | None = None, *, policy: str = "persist", name: str | None = None) -> Any:
        def register(f: Callable) -> Rule:
            r = Rule(f, self, name=name, policy=policy)
            if r.name in self.rules:
                # tasks of the rule it replaces must not run the old function any more
                prefix = r.name + "/"
                for key in [k for k in self._tasks if k.startswith(prefix)]:
                    del self._tasks[key]
            self.rules[r.name] = r
            return r
        return register(fn) if fn is not None else register

    def _is_engine_object(self, obj: Any) -> bool:
        return isinstance(obj, (Rule, Build, Store))

    def _task_for_key(self, key: str) -> Task | None:
        task = self._tasks.get(key)
        if task is not None:
            return task
        trace = self.store.any_trace(key)
        rule = self.rules.get(trace.rule) if trace is not None else None
        if rule is None:
            return None
        task = rule.task_from_encoded(key, trace.args, trace.repr)
        self._tasks[key] = task
        return task

    def _target(self, t: Any) -> Task:
        if isinstance(t, Task):
            return t
        if isinstance(t, Rule):
            return t.task()
        if isinstance(t, str):
            return resolve_target(self.rules, t).task()
        raise RuleError(f"cannot build {t!r}: give a Task (rule.task(...)), a rule, or a rule name")

    # ------------------------------------------------------------ values in memory

    def _remember(self, digest: str, value: Any, size: int) -> None:
        """Keep a value in memory (least recently used first out, within _MEMORY_BYTES of
        serialized size and _MEMORY_VALUES entries)."""
        with self._values_lock:
            if digest in self._values:
                self._values.move_to_end(digest)
                return
            self._values[digest] = value
            self._sizes[digest] = size
            self._values_bytes += size
            while len(self._values) > 1 and (self._values_bytes > _MEMORY_BYTES
                                             or len(self._values) > _MEMORY_VALUES):
                old, _ = self._values.popitem(last=False)
                self._values_bytes -= self._sizes.pop(old)

    def _recall(self, digest: str, checked: set[str]) -> tuple[bool, Any]:
        """(found, value) for a value hash: from memory, or loaded from the store. A value in
        memory is re-hashed once per build (`checked`): one changed in place since it was built
        is dropped, and the stored value is used instead."""
        value = self._values.get(digest, _ABSENT)
        if value is not _ABSENT:
            if isinstance(value, _IMMUTABLE) or digest in checked or digest.startswith("u:"):
                return True, value
            try:
                same = hashing.value_hash(value) == digest
            except hashing.UnserializableValue:
                same = False
            if same:
                checked.add(digest)
                return True, value
            log.warning("nbbuild: a value was changed in place after it was built; using the stored one")
            self._forget(digest)
        blob = self.store.get_value(digest)
        if blob is None:
            return False, None
        try:
            value = hashing.deserialize(blob)
        except Exception:  # unpickling runs arbitrary code paths: any failure is a miss
            log.warning("nbbuild: stored value %s could not be loaded; the task will run again", digest)
            return False, None
        checked.add(digest)
        self._remember(digest, value, len(blob))
        return True, value

    def _keep_attachment(self, task: Task, digest: str, data: Any, persist: bool) -> None:
        with self._values_lock:
            self._attachments[task.key] = (digest, data)
        if persist:
            try:
                self.store.put_attachment(task.key, digest, hashing.serialize(data)[0])
            except hashing.UnserializableValue as e:
                log.warning("nbbuild: what %r attached cannot be stored: %s", task, e)

    def attachment(self, target: Any) -> Any:
        """What the run that gave the target its current value attached (`trace.attach`), or None
        when the target is not up to date in this process or its run attached nothing."""
        key = self._target(target).key
        digest = self._clean.hashes.get(key)
        if digest is None:
            return None
        found = self._attachments.get(key)
        if found is not None and found[0] == digest:
            return found[1]
        blob = self.store.get_attachment(key, digest)
        try:
            return hashing.deserialize(blob) if blob is not None else None
        except Exception:  # as for values: a stored attachment that cannot be loaded is a miss
            log.warning("nbbuild: what %r attached could not be loaded", target)
            return None

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """One build at a time. A thread that waits long says why: a rule body that starts a
        thread which calls rules would otherwise hang without a word."""
        if not self._lock.acquire(timeout=_PATIENCE):
            log.warning("nbbuild: waiting for another build of this store to finish; a rule that calls "
                        "rules from a thread it started waits forever: call them from the rule itself "
                        "or use rule.map")
            self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def _forget(self, digest: str | None = None) -> None:
        """Drop one value (or all) from memory; the store keeps them."""
        with self._values_lock:
            for d in [digest] if digest is not None else list(self._values):
                if self._values.pop(d, None) is not None or d in self._sizes:
                    self._values_bytes -= self._sizes.pop(d, 0)

    # ------------------------------------------------------------ building

    def build(self, *targets: Any, force: bool = False) -> list[Any]:
        """Values of the targets, brought up to date. `force`: run the targets themselves even if
        they are up to date (their dependencies are still only verified)."""
        tasks = [self._target(t) for t in targets]
        rec = current.get()
        if rec is not None and rec.scheduler.build is self:
            return rec.scheduler.fetch_values(rec, tasks)
        for t in tasks:
            if t.rule.build is not self:
                raise RuleError(f"{t!r} is a task of another Build; build it with that one")
            if self.rules.get(t.rule.name) is not t.rule:
                raise RuleError(f"{t!r} belongs to a rule that was redefined or removed; make the task again")
            self._tasks.setdefault(t.key, t)
        with self._turn(), _engine_work() as collect:
            start = time.perf_counter()
            self.store.refresh()
            if not self._files.entries:
                self._files.entries.update(self.store.file_entries())
            if self.store.generation != self._generation:
                self._clean.clear()
                self._generation = self.store.generation
            sched = Scheduler(self)
            # what this process verified before and whose inputs did not change is known up to date
            self._clean.invalidate(self.rules, sched.version, self._files.hash)
            sched.known.update(self._clean.hashes)
            if force:
                sched.forced = {t.key for t in tasks}
                for key in sched.forced:
                    sched.known.pop(key, None)
            preseeded = bool(sched.known)
            try:
                states = sched.run(tasks, collect)
            finally:
                self.store.save_file_entries(self._files.take_changed())
                self.store.flush()
            self._clean.record(sched.states.values(), sched.versions, DONE)
            untouched = self._clean.closure([t.key for t in tasks], sched.states) if preseeded else []
            self.report = _report(sched, untouched, time.perf_counter() - start)
            try:
                evict(self.store, self.store.quota, lambda: {st.hash for st in sched.states.values() if st.hash})
            except Exception:  # eviction is housekeeping: it must not fail a build that succeeded
                log.warning("nbbuild: eviction failed", exc_info=True)
            errors = [sched.error_for(st) for st in states if st.status != DONE or not st.has_value]
            if errors:
                first = errors[0]
                if isinstance(first, BuildError):
                    first.errors = errors
                raise first
            return [st.value for st in states]

    # ------------------------------------------------------------ why

    def why(self, target: Any) -> str:
        task = self._target(target)
        memo: dict[str, tuple[str | None, str | None]] = {}
        reason = self._explain([task], memo)[0]
        if reason is not None:
            return f"{task!r} is stale: {reason}"
        digest = memo[task.key][1]
        if task.rule.policy == "persist" and digest not in self._values and not self.store.has_value(digest):
            return f"{task!r} is up to date, but its value is no longer stored: it runs again when needed"
        return f"{task!r} is up to date"

    def plan(self, *targets: Any) -> list[tuple[str, str]]:
        """What building the targets would run, and why, dependencies first; nothing runs. A task
        below a stale one may yet be spared by early cutoff: the plan says what may run."""
        memo: dict[str, tuple[str | None, str | None]] = {}
        self._explain([self._target(t) for t in targets], memo)
        return [(self._tasks[key]._repr if key in self._tasks else key, reason)
                for key, (reason, _) in memo.items() if reason is not None]

    def _explain(self, tasks: list[Task], memo: dict) -> list[str | None]:
        for task in tasks:
            self._tasks.setdefault(task.key, task)
        self.store.refresh()
        versions: dict[Rule, Any] = {}
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20000))
        try:
            return [self._why(task, memo, versions)[0] for task in tasks]
        finally:
            sys.setrecursionlimit(limit)

    def _why(self, task: Task, memo: dict, versions: dict) -> tuple[str | None, str | None]:
        """(None, hash) when up to date, else (reason, None)."""
        if task.key in memo:
            return memo[task.key]
        memo[task.key] = ("it depends on itself", None)   # until known; a cycle reads this
        rule = task.rule
        traces = self.store.traces(task.key, rule.policy == "persist")
        if rule.policy == "none":
            result: tuple[str | None, str | None] = ("its policy is 'none': it runs every build", None)
        elif not traces:
            result = ("never built", None)
        else:
            v = versions.get(rule) or versions.setdefault(rule, rule_version(rule.fn, self._is_engine_object))
            matching = [t for t in traces if t.version == v.version]
            if not matching:
                result = (_version_change(rule.name, traces[0], v), None)
            else:
                # the newest trace's reason is the one to give, unless an older trace still matches
                reasons = []
                for tr in matching:
                    reason = self._why_trace(tr, memo, versions)
                    if reason is None:
                        result = (None, tr.result)
                        break
                    reasons.append(reason)
                else:
                    result = (reasons[0], None)
        del memo[task.key]          # re-inserted last: the memo lists dependencies first
        memo[task.key] = result
        return result

    def _why_trace(self, tr: Any, memo: dict, versions: dict) -> str | None:
        for group in tr.deps:
            for key, recorded in group:
                if key.startswith(FILE_PREFIX):
                    path = key[len(FILE_PREFIX):]
                    now = self._files.hash(path)
                    if now != recorded:
                        return f"file {_short(path)} {'is missing' if now == MISSING else 'changed'}"
                    continue
                dep = self._task_for_key(key)
                if dep is None:
                    return f"rule {key.partition('/')[0]} it used is gone or changed its arguments"
                reason, h = self._why(dep, memo, versions)
                if reason is not None:
                    return f"dependency {dep!r} is stale ({reason})"
                if h != recorded:
                    return f"dependency {dep!r} changed"
        return None

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        self._pool.shutdown()
        self.store.close()

    def __enter__(self) -> Build:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def _engine_work() -> Iterator[bool]:
    """Pause the cyclic garbage collector for the engine's own work: what it allocates (traces,
    task states) lives for the whole build, so collecting it generation by generation is wasted
    time. Yields whether collection was on, to be restored for rule bodies and afterwards."""
    collect = gc.isenabled()
    gc.disable()
    try:
        yield collect
    finally:
        if collect:
            gc.enable()


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


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


def _report(sched: Scheduler, untouched: list[tuple[str, float, str]], seconds: float) -> BuildReport:
    """`untouched`: tasks known up to date from earlier builds of this process, never visited."""
    lists: dict[str, list[str]] = {k: [] for k in ("executed", "verified", "constructed", "failed", "skipped")}
    # per-task data kept as strings and floats (untracked by the garbage collector); TaskReport
    # records are made only when `tasks` is read
    texts, outcomes, durations, notes = [], [], [], {}
    unstored, saved, hits, misses = [], 0.0, 0, 0
    rows = [(t, s, p, "verified", "") for t, s, p in untouched]
    rows += [(st.task._repr, st.seconds, st.task.rule.policy, st.outcome or "failed", st.unstored)
             for st in sched.order if st.outcome != "obsolete"]
    for text, secs, policy, outcome, note in rows:
        lists[outcome].append(text)
        texts.append(text)
        outcomes.append(outcome)
        durations.append(secs)
        if outcome == "verified" or outcome == "constructed":
            saved += secs
            hits += policy == "persist"
        elif note:
            unstored.append(text)
            notes[text] = note
        elif outcome == "executed":
            misses += policy == "persist"
    # hits and misses count reuse of stored values (policy "persist"); the store keeps the totals
    sched.store.count("hits", hits)
    sched.store.count("misses", misses)
    return BuildReport(
        executed=lists["executed"], reused=lists["verified"] + lists["constructed"], failed=lists["failed"],
        skipped=lists["skipped"], unstored=unstored, constructed=lists["constructed"], seconds=seconds,
        saved_seconds=saved, rows=(texts, outcomes, durations, notes))
