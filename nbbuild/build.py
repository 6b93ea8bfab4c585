"""The Build facade: a store, a scheduler and an executor composed; the report; `why`.

Contract:
- `Build(path, quota=, workers=, min_free=, eviction=)` opens (or creates) the store at `path`
  with its bounds (eviction.resolve); the NBBUILD_* settings are read when it is made
  (`b.settings`, settings.py; `settings=` gives them instead); also a context manager that closes it. `shared=URL` (or
  NBBUILD_SHARED) gives it a shared tier (shared.py, sharing.py; `shared_readonly=True` never
  uploads); closing waits up to NBBUILD_SHARED_WAIT seconds for its uploads. After each build the
  store is brought back within them (eviction.evict), and old metadata is pruned now and then. `@b.rule` / `@b.rule(policy=..., name=...)` registers rules by name (a rule of
  the same name replaces the earlier one, as re-running a notebook cell does).
- `b.build(*targets, force=False, workers=None)` brings targets (Tasks, or rules taking no
  arguments) up to date concurrently (`workers` at once for this build only) and returns their values. Other targets still finish when one fails; then the first failure is
  raised (BuildError, or CycleError) with every failure in `.errors`. Inside a running rule body
  it is a tracked fetch.
- `b.watch(listener)` / `b.unwatch(listener)`, `b.listeners`: what is told about every top-level
  build (report/listeners.py: `started(build)`, `finished(build)`, and `built(build, targets)`
  after one that succeeded); meanwhile `b.progress()` (from any thread) is a `progress.Progress`
  snapshot of the running build, and after it the settled last one. A listener that raises is
  logged and dropped for that build, never failing it. `b.keep_view_state(name, value)` keeps a
  view's JSON value in the store for later sessions, `b.view_state(name)` reads it.
- `progress=`: True shows builds as a text line on stderr (console.TextProgress: redrawn on a
  terminal, a plain line every few seconds elsewhere, then the report's line), False does not;
  None (the default) reads NBBUILD_PROGRESS (1 or 0), else shows it when stderr is a terminal and
  no Jupyter kernel runs here.
- `executor=` where rule bodies run: "threads" (the default: here, `workers` at once),
  "processes" (a pool of worker processes), "dask" (a LocalCluster made on first use), a
  `distributed.Client`, or a Dask scheduler's address. `@b.rule(executor=, timeout=, retries=)`
  sets them per rule (engine/body.py, executors/). The store, traces and scheduling stay here.
- `b.metrics()`: `metrics.Metrics` of the last build and of this Build's session, with store stats.
- `b.report` describes the last build; `b.why(task)` explains, without running anything, why a
  task is stale or that it is up to date (and which of its files the last build that checked it
  put back from the store: `_restored`; which environment variables it set again:
  `_environ_restored`).
- `b.attachment(task)`: what the run behind the task's current value attached (`trace.attach`),
  kept beside the value and outside its hash (the notebook keeps a cell's displayed output there).
- Values live in memory too (`memory.Memory`, bounded), so a no-op rebuild in the same process
  loads nothing; a remembered value changed in place since is noticed and replaced by the stored one.
  What a build verified is kept in the store too: a fresh process's first build re-checks its inputs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from typing import Any, Callable, Iterator

from .engine import environment, files, outputs
from .engine.attachments import Attachments
from .engine.body import engine_work
from .engine.context import EngineContext
from .engine.explain import Explaining
from .engine.rule import Rule, Target, resolve_target
from .engine.scheduler import Scheduler
from .engine.state import DONE, Outcome
from .engine.task import Task
from .engine.trace import current
from .engine.verified import CleanSet
from .errors import BuildError, RuleError, SettingError
from .executors.hubs import HelperPool
from .executors.pools import make_executor
from .executors.protocol import Executor
from .report.console import TextProgress, wanted
from .report.metrics import Metrics, Session
from .report.listeners import BuildListener, Listeners
from .report.progress import Tracker, Watched
from .report.report import BuildReport, TaskReport, make_report
from .store import eviction as _bounds
from .store.memory import Memory
from .store.shared import open_tier
from .settings import Settings
from .settings import read as read_settings
from .team import TeamCache
from .store.store import Store

__all__ = ["Build", "BuildReport", "TaskReport"]

log = logging.getLogger("nbbuild")
_PATIENCE = 5.0


class Build(Explaining, Watched, Listeners, TeamCache):
    def __init__(self, path: str | os.PathLike = ".nbbuild", quota: int | str | None = None,
                 workers: int | None = None, *, min_free: int | str | None = None, eviction: str | None = None,
                 progress: bool | None = None, executor: Any = None, shared: str | None = None,
                 shared_readonly: bool | None = None, settings: Settings | None = None):
        # the environment's NBBUILD_* settings, read now, once, for this Build's life (settings.py)
        self.settings = read_settings() if settings is None else settings
        for name, given in (("quota", quota), ("min_free", min_free)):
            if given is not None:
                _bounds.size(given, name)
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        _check_workers(workers)
        self._sched: Scheduler | None = None     # the running build's, while it runs
        tier = open_tier(shared, shared_readonly, self.settings)
        try:
            self.store = Store(path, shared=tier, held=self._held, on_room=_bounds.make_room)
        except OSError as e:
            raise RuleError(str(e)) from None
        try:
            _bounds.resolve(self.store, quota, min_free, eviction, self.settings)
        except SettingError:
            self.store.close()
            raise
        self.workers = workers
        self.executor = executor
        self._executors: dict[Any, Executor] = {}
        if executor is not None:
            try:
                self.executor_for(None)                 # a bad one says so now, not at the first build
            except RuleError:
                self.store.close()
                raise
        self.order = "critical-path"      # or "fifo": which ready task starts first (engine/scheduler.py)
        self.rules: dict[str, Rule] = {}
        self.report: BuildReport | None = None
        self.memory = Memory(self.store)
        self._tasks: dict[str, Task] = {}
        self._failures: dict[str, str] = {}                  # task key -> why its last build failed
        self._attachments = Attachments(self.store)
        self._restored: dict[str, list[str]] = {}            # task key -> files its last check put back
        self.owners = outputs.Owners()                       # file -> the task that wrote it last
        self._environ_restored: dict[str, list[str]] = {}    # task key -> environment variables it set again
        self._files = files.FileHasher()     # stat entries come from the store at the first build
        self._clean = CleanSet()
        self._generation = self.store.generation
        self._pool = HelperPool()
        self.listeners: list[BuildListener] = []
        self._tracker: Tracker | None = None
        self._expected: dict[tuple[str, ...], int] = {}    # target keys -> tasks their last build checked
        self._session = Session()
        if wanted(progress, self.settings.progress):
            self.watch(TextProgress())
        self._lock = threading.RLock()          # one build at a time
        # what the engine (scheduler, bodies, explain) uses of this Build, and nothing else of it
        self.context = EngineContext(
            store=self.store, memory=self.memory, pool=self._pool, rules=self.rules, tasks=self._tasks,
            files=self._files, owners=self.owners, verified=self._clean, attachments=self._attachments,
            executor_for=self.executor_for, engine_types=(Rule, Build, Store), owner=self,
            failures=self._failures, restored=self._restored, environ_restored=self._environ_restored)
        files.install_hook()
        files.watch_outside(self.owners.outside)
        environment.install()     # reads of os.environ become inputs by key

    # ------------------------------------------------------------ rules

    def rule(self, fn: Callable | None = None, *, policy: str = "persist", name: str | None = None,
             executor: Any = None, timeout: float | None = None, retries: int = 0) -> Any:
        def register(f: Callable) -> Rule:
            r = Rule(f, self, name=name, policy=policy, executor=executor, timeout=timeout, retries=retries)
            if executor is not None:
                self.executor_for(r)
            if r.name in self.rules:
                # tasks of the rule it replaces must not run the old function any more
                prefix = r.name + "/"
                for key in [k for k in self._tasks if k.startswith(prefix)]:
                    del self._tasks[key]
            self.rules[r.name] = r
            return r
        return register(fn) if fn is not None else register

    def _target(self, t: object) -> Task:
        if isinstance(t, Task):
            return t
        if isinstance(t, Rule):
            return t.task()
        if isinstance(t, str):
            return resolve_target(self.rules, t).task()
        raise RuleError(f"cannot build {t!r}: give a Task (rule.task(...)), a rule, or a rule name")

    # ------------------------------------------------------------ values in memory

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

    def remembered(self, target: Target) -> tuple[str, Any] | None:
        """(hash, value) of the target's current value when memory holds it; else None. Loads
        nothing: for a caller that checks whether a value it was handed changed in place."""
        digest = self._clean.hashes.get(self._target(target).key)
        if digest is None or digest not in self.memory:
            return None
        return digest, self.memory.values.get(digest)

    def forget(self, target: Target | None = None, digest: str | None = None) -> None:
        """Drop a target's current value (or the value of that hash; with neither, all values)
        from memory; the store keeps them. For a value changed in place after it was built: the
        next fetch loads the stored one."""
        if target is not None:
            digest = self._clean.hashes.get(self._target(target).key)
            if digest is None:
                return
        self.memory.forget(digest)

    # ------------------------------------------------------------ building

    def build(self, *targets: Any, force: bool = False, workers: int | None = None) -> list[Any]:
        """Values of the targets, brought up to date. `force`: run the targets themselves even if
        they are up to date (their dependencies are still only verified). `workers`: how many rule
        bodies run at once in this build (None: the Build's `workers`, which stays as it was)."""
        if workers is not None:
            _check_workers(workers)
        tasks = [self._target(t) for t in targets]
        rec = current.get()
        if rec is not None and rec.scheduler.rules_owner is self:
            return rec.scheduler.fetch_values(rec, tasks)
        for t in tasks:
            if t.rule.build is not self:
                raise RuleError(f"{t!r} is a task of another Build; build it with that one")
            if self.rules.get(t.rule.name) is not t.rule:
                raise RuleError(f"{t!r} belongs to a rule that was redefined or removed; make the task again")
            self._tasks.setdefault(t.key, t)
        with self._turn(), engine_work() as collect:
            start = time.perf_counter()
            self.store.begin_build()
            self.store.refresh()
            if not self._files.entries:
                self._files.entries.update(self.store.file_entries())
            if self.store.generation != self._generation:
                self._clean.clear()
                self._generation = self.store.generation
            sched = Scheduler(self.context, self.workers if workers is None else workers, self.order)
            targets = tuple(t.key for t in tasks)
            tracker = self._tracker = Tracker(sched, tasks, self._expected.get(targets, 0))
            tally = dict(self.store.tally)
            listening = self._notify("started", list(self.listeners))
            before = self.report
            try:
                values = self._run(tasks, sched, force, collect, start)
            except BaseException as e:
                tracker.finish(self.report if self.report is not before else None, e)
                raise
            else:
                tracker.finish(self.report)
            finally:
                report = self.report if self.report is not before else None
                if report is not None:
                    self._expected[targets] = len(report.rows[0])
                    self._session.add(report, {k: v - tally.get(k, 0) for k, v in self.store.tally.items()},
                                      [(st.task.rule.name, st.seconds) for st in sched.order
                                       if st.outcome == Outcome.EXECUTED])
                self._notify("finished", listening)
        self._notify("built", list(self.listeners), tasks)
        return values

    def _run(self, tasks: list[Task], sched: Scheduler, force: bool, collect: bool, start: float) -> list[Any]:
        """The build proper, its report and eviction after it; the values of the targets."""
        # the store's `held` (_held) reads this build's states meanwhile
        self._sched = sched
        sched.rebuilder.start(t.key for t in tasks)      # the red-green set of earlier builds
        if force:
            sched.forced = {t.key for t in tasks}
            for key in sched.forced:
                sched.known.pop(key, None)
        preseeded = bool(sched.known)
        try:
            states = sched.run(tasks, collect)
        finally:
            self.store.save_file_entries(self._files.take_changed())
            self.store.end_build()
            lost = self.store.take_lost()     # inline values whose batch the store refused
            for st in sched.states.values() if lost else ():
                if st.outcome == Outcome.EXECUTED and st.hash in lost and not st.unstored:
                    st.unstored = self.store.write_error or "the store could not be written"
        sched.rebuilder.remember(sched.states.values())
        for st in sched.states.values():
            for found, kept in ((sched.restored, self._restored), (sched.environ_restored, self._environ_restored)):
                if st.task.key in found:
                    kept[st.task.key] = found[st.task.key]
                else:
                    kept.pop(st.task.key, None)
            if st.status == DONE:
                self._failures.pop(st.task.key, None)
            elif st.outcome in (Outcome.FAILED, Outcome.SKIPPED):
                err = sched.error_for(st)
                own = st.error
                self._failures[st.task.key] = f"{type(own).__name__}: {own}" if own is not None else str(err)
        untouched = self._clean.closure([t.key for t in tasks], sched.states) if preseeded else []
        self.report = make_report(sched, untouched, time.perf_counter() - start)
        self.store.touch(st.hash for st in sched.states.values() if st.has_value and st.hash)
        try:
            # once the build is over only the targets' values are sure to stay; the policy
            # orders everything else, what this build made or used included
            _bounds.evict(self.store, lambda: {st.hash for st in states if st.hash}
                          | outputs.copies(st.trace for st in states))
            _bounds.maybe_prune(self.store)
        except Exception:  # eviction is housekeeping: it must not fail a build that succeeded
            log.warning("nbbuild: eviction failed", exc_info=True)
        finally:
            self._sched = None
        errors = [sched.error_for(st) for st in states if st.status != DONE or not st.has_value]
        if errors:
            first = errors[0]
            if isinstance(first, BuildError):
                first.errors = errors
            raise first
        return [st.value for st in states]

    def _held(self) -> set[str]:
        """The store's `held`: values the running build knows only by their hash. One in memory
        needs no stored copy while it runs (keeping it later is the eviction policy's call: pinning
        all a big build touched evicts all else). From worker threads: dict.copy() is atomic."""
        sched = self._sched
        return {st.hash for st in sched.states.copy().values() if st.hash and not st.has_value} if sched else set()

    def attachment(self, target: Target) -> Any:
        """What the run that gave the target its current value attached (`trace.attach`), or None
        when the target is not up to date in this process or its run attached nothing."""
        key = self._target(target).key
        digest = self._clean.hashes.get(key)
        return self._attachments.get(key, digest, target) if digest is not None else None

    def metrics(self) -> Metrics:
        """Figures of the last build and of the session, and the store's stats."""
        return self._session.metrics(self.store.stats())

    # ------------------------------------------------------------ housekeeping

    def gc(self) -> int:
        """Evict now, down to the quota and the free-space floor (no build is running: no value is
        held), and prune old metadata; how many values went."""
        with self._turn():
            removed = _bounds.evict(self.store)
            _bounds.prune(self.store)
            self._session.evicted(removed)
            return removed

    def gc_foreign(self) -> tuple[int, int]:
        """Remove the entries other keys signed (store/foreign.py); (how many, bytes) went."""
        with self._turn():
            return self.store.gc_foreign()

    def set_quota(self, quota: int | str | None, save: bool = True) -> None:
        """Change the store's quota ('unlimited' for none); `save` keeps it in the store for the
        sessions that follow (NBBUILD_QUOTA and Build(quota=) still come first there)."""
        found = _bounds.size(quota, "quota")       # SettingError, nothing changed
        size = None if found == math.inf else int(found)
        with self._turn():
            self.store.quota = size
            self.store.quota_source = "saved in the store (%nbbuild store --quota)" if save else "set for this Build"
            if save:
                self.store.set_setting("quota", "unlimited" if size is None else size)
            _bounds.evict(self.store)

    def clear(self) -> None:
        """Empty the store and forget what this process built: every task runs again."""
        with self._turn():
            self.store.clear()
            self.forget()
            self._clean.clear()
            self._attachments.clear()
            self._restored.clear()
            self._environ_restored.clear()
            self._failures.clear()
            self._generation = self.store.generation

    # ------------------------------------------------------------ lifetime

    def executor_for(self, rule: Rule | None) -> Executor | None:
        """What runs the rule's bodies (None: here, on a thread), made on first use."""
        spec = rule.executor if rule is not None and rule.executor is not None else self.executor
        if spec is None or spec == "threads":
            return None
        key = spec if isinstance(spec, str) else id(spec)
        found = self._executors.get(key)
        if found is None:
            try:
                found = self._executors[key] = make_executor(spec, self.workers)
            except ValueError as e:
                raise RuleError(str(e)) from None
        return found

    def close(self) -> None:
        self._clean.keep(self.store.keep_verified, now=True)
        for ex in self._executors.values():
            try:
                ex.close()
            except Exception:  # closing is best effort: the store must still be closed
                log.debug("nbbuild: closing an executor failed", exc_info=True)
        self._executors.clear()
        self._pool.shutdown()
        self.store.close(self.settings.shared_wait)

    def __enter__(self) -> Build:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_workers(workers: Any) -> None:
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise RuleError(f"workers={workers!r}: give a whole number of at least 1")
