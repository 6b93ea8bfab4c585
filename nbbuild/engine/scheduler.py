"""The suspending scheduler: one build, top-down, dependencies discovered as rule bodies run.

Contract:
- `Scheduler(build).run(tasks)` brings the tasks up to date and returns their `TaskState`s; every
  task runs at most once per build; a task's value is loaded only when a target or a running rule
  needs it (verifying needs only dependencies' hashes).
- Concurrency (the threads and greenlets are executors.Hubs): a task that waits for a dependency
  suspends its greenlet and so holds no thread. A fresh dependency is processed inline on the
  asking greenlet (cheap: no switch on the no-op path) until the nesting reaches `MAX_INLINE`;
  deeper, it is queued and a hub starts it at the bottom of a stack, so neither deep chains nor
  wide fan-outs grow one stack without bound. Of a group fetched together, all but the first are offered to other threads first
  (help-first), then taken back if nobody started them. With several threads, the group is
  ordered by the longest recorded path through each task (priority.py): the asking greenlet
  takes the most urgent, and idle threads start queued tasks most urgent first (`build.order =
  "fifo"` keeps the order of asking). A queued task starts in a copy of the context of the task
  that asked for it (as an asyncio task does, and as it would inline), its recorder left out.
- A reused task's files (outputs.py) are put back while its trace is matched: before it is done,
  so before anything that depends on it goes on. `restored` maps the keys of tasks whose files
  were put back to those files' paths. So are the environment variables its run set
  (environment.py; `environ_restored`: task key -> names), and a variable a task set itself is not
  a change of its input (`owner(key)` names the task to environment.py).
- A task that would wait on a task that (transitively) waits on it raises CycleError there.
- Failures are recorded in the state (own error, or the failed dependency that caused it) and
  never unwind the engine; only cancellation (KeyboardInterrupt, SystemExit) does, after which
  every waiting greenlet is woken to unwind with `Cancelled`.
"""
from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any, Sequence

from greenlet import GreenletExit as GreenletExitType

from . import body, environment, inputs, outputs
from ..errors import BuildError, Cancelled, CycleError
from ..executors.hubs import Hubs
from .priority import CriticalPath, ReadyQueue
from .rule import Task, Version, rule_version
from .trace import ENV_PREFIX, FILE_PREFIX, INPUT_PREFIX, Group, Recorder, Trace, current, match

__all__ = ["Scheduler", "TaskState"]

log = logging.getLogger("nbbuild")

NEW, QUEUED, ACTIVE, DONE, FAILED = range(5)
MAX_INLINE = 24


class TaskState:
    """What one build knows of one task. Slots: one object per task per build, no dict."""

    __slots__ = ("task", "status", "hash", "value", "has_value", "error", "cause", "waiters",
                 "blocked_on", "outcome", "seconds", "trace", "depth", "loading", "unstored", "up",
                 "attempts", "overdue", "context", "deferred", "pending")

    def __init__(self, task: Task):
        self.task = task
        self.status = NEW
        self.hash: str | None = None
        self.value: Any = None
        self.has_value = False
        self.error: BaseException | None = None
        self.cause: TaskState | None = None
        self.waiters: list | None = None
        self.blocked_on: TaskState | None = None
        self.outcome = ""            # executed | verified | constructed | failed | skipped | obsolete
        self.seconds = 0.0
        self.trace: Trace | None = None
        self.depth = 0
        self.loading = False
        self.unstored = ""
        self.up = 0.0                # recorded time of the chain above it (priority.py)
        self.attempts = 0            # runs of its body in this build (body.py: retries)
        self.overdue = False         # ran past its timeout on a thread
        self.context: contextvars.Context | None = None   # where it was asked for, when queued
        self.deferred = 0            # 1: waiting for what its last run fetched; 2: its body runs next
        self.pending = 0             # of those, how many are not done yet

    def add_waiter(self, waker: Any) -> None:
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waker)

    def take_waiters(self) -> list:
        w = self.waiters
        self.waiters = None
        return w or []


class Scheduler:
    def __init__(self, build: Any):
        self.build = build
        self.store = build.store
        self.files = build._files
        self.states: dict[str, TaskState] = {}
        self.order: list[TaskState] = []
        self.lock = threading.Lock()
        self.traces = self.store.traces_index()
        # which queued task an idle thread starts: the longest recorded path first (one thread: no choice)
        critical = build.workers > 1 and build.order == "critical-path"
        self.paths = CriticalPath(self.traces) if critical else None
        self.queue = ReadyQueue(self.paths)
        self.hubs = Hubs(build._pool, max(0, build.workers - 1), self.lock, self._take, self._worker_process,
                         self._unstall if critical else None)
        self.deferred: list[TaskState] = []     # tasks waiting for what their last run fetched
        self.versions: dict[Any, Version] = {}
        self.known: dict[str, str] = {}          # key -> value hash of every task done in this build
        self.tasks: dict[str, Task] = build._tasks
        self.checked: set[str] = set()
        self.forced: set[str] = set()            # keys that run even if up to date (build(force=True))
        self.cancelled: BaseException | None = None
        self.targets: frozenset[str] = frozenset()     # keys of the tasks this build was asked for
        self.running: dict[str, tuple[TaskState, float]] = {}   # bodies running now, read by views
        self.waiting_elsewhere: dict[int, Any] = {}   # greenlets waiting on remote work (remote.py)
        self.gc = False
        self.restored: dict[str, list[str]] = {}     # task key -> files put back from the store
        self.environ_restored: dict[str, list[str]] = {}     # task key -> environment variables set again
        self._root_states: list[TaskState] = []

    # ------------------------------------------------------------ running, waiting, waking

    def run(self, tasks: Sequence[Task], collect: bool) -> list[TaskState]:
        """`collect`: the cyclic garbage collector was on before the build paused it for the
        engine's work; rule bodies run with it on again (see _execute)."""
        self.gc = collect
        try:
            self.hubs.run(self._root, tasks)
        except BaseException as e:
            self._cancel(e)
            raise
        return self._root_states

    def _take(self) -> TaskState | None:
        """Under the lock: the next queued task nobody has taken back."""
        while self.queue:
            st = self.queue.pop()
            if st.status == QUEUED:
                st.status = ACTIVE
                return st
        return None

    def _root(self, tasks: Sequence[Task]) -> None:
        self.targets = frozenset(t.key for t in tasks)
        if self.paths is not None:
            self.paths.targets = self.targets
        sts = self._ensure(None, tasks, 0)
        self._root_states = sts
        for st in sts:
            if st.status == DONE and not st.has_value:
                try:
                    self._value(st, None)
                except BuildError:
                    pass

    def _wait(self, me: TaskState | None, st: TaskState) -> None:
        with self.lock:
            if st.status >= DONE:
                return
            if me is not None:
                path, x = [st], st.blocked_on
                while x is not None and x is not me:
                    path.append(x)
                    x = x.blocked_on
                if x is me or st is me:
                    raise CycleError([me.task] + [s.task for s in path] + ([me.task] if st is not me else []))
                me.blocked_on = st
            st.add_waiter(self.hubs.waker())
        try:
            self.hubs.suspend()
        finally:
            if me is not None:
                me.blocked_on = None

    def _finish(self, st: TaskState, status: int) -> None:
        with self.lock:
            st.status = status
            self.order.append(st)
            if status == DONE:
                self.known[st.task.key] = st.hash  # type: ignore[assignment]
            if st.waiters:
                self.hubs.wake(self._ready_deferred(st.take_waiters()))

    def _ready_deferred(self, waiters: list) -> list:
        """Under the lock: of a finished task's waiters, the greenlets to wake; the deferred tasks
        among them whose last one this was are queued (to start on whichever thread is free)."""
        wakers = []
        for w in waiters:
            if type(w) is not TaskState:
                wakers.append(w)
            elif w.deferred == 1:
                w.pending -= 1
                if w.pending == 0:
                    self._requeue(w)
        return wakers

    def _requeue(self, st: TaskState) -> None:
        """Under the lock: a deferred task's body is next, queued at the length of the chain left
        from it: its own time and the chain above it."""
        st.deferred, st.status = 2, QUEUED
        paths = self.paths
        self.queue.push(st, max(st.up, paths.above(st.task.key)) + paths.seconds(st.task.key))  # type: ignore
        self.hubs.notify()

    def _unstall(self) -> bool:
        """Under the lock, when every thread is idle: deferred tasks that still wait can only be
        waiting for a cycle through what their last runs fetched (the code changed since): their
        bodies run now, and a real cycle is then found as usual."""
        waiting = [st for st in self.deferred if st.deferred == 1 and st.status < DONE]
        self.deferred.clear()
        if self.waiting_elsewhere or not waiting:
            self.deferred.extend(waiting)
            return False
        for st in waiting:
            self._requeue(st)
        return True

    def _cancel(self, exc: BaseException) -> None:
        wakers = []
        with self.lock:
            self.cancelled = exc
            for st in self.states.values():
                if st.status < DONE:
                    st.status = FAILED
                    st.error = Cancelled("build interrupted")
                    wakers.extend(w for w in st.take_waiters() if type(w) is not TaskState)
            wakers.extend(self.waiting_elsewhere.values())     # bodies waiting on remote work
        self.hubs.cancel(exc, wakers)

    # ------------------------------------------------------------ the engine

    def _ensure(self, me: TaskState | None, tasks: Sequence[Task], depth: int) -> list[TaskState]:
        """Bring `tasks` up to date (hashes known); returns their states, all done or failed."""
        if len(tasks) == 1:  # the common case: one call, often of a task already done
            st = self._one(me, tasks[0], depth)
            if st is not None:
                return [st]
        sts: list[TaskState] = []
        fresh: list[TaskState] = []
        with self.lock:
            if self.cancelled is not None:
                raise Cancelled("build interrupted")
            for t in tasks:
                st = self.states.get(t.key)
                if st is None:
                    st = self.states[t.key] = TaskState(t)
                    self.tasks.setdefault(t.key, t)
                    fresh.append(st)
                elif st.status == QUEUED and self.paths is not None:
                    self._raise(me, st)
                sts.append(st)
            inline = depth < MAX_INLINE
            paths = self.paths
            ranked = paths is not None and len(fresh) > inline
            if not ranked:
                self._offer(me, fresh, inline, None)
        if ranked:
            # urgencies are worked out outside the lock (the other threads go on meanwhile): nobody
            # starts a task that is still NEW, they only wait for it
            up = me.up + paths.seconds(me.task.key) if me is not None else 0.0    # type: ignore[union-attr]
            priorities = [up + paths.below(st.task.key) for st in fresh]          # type: ignore[union-attr]
            if inline:       # the asking thread takes the most urgent itself
                best = max(range(len(fresh)), key=priorities.__getitem__)
                fresh.insert(0, fresh.pop(best))
                priorities.insert(0, priorities.pop(best))
            with self.lock:
                if self.cancelled is not None:      # interrupted meanwhile: these were failed
                    raise Cancelled("build interrupted")
                self._offer(me, fresh, inline, priorities)
        if inline:
            for i, st in enumerate(fresh):
                if i:
                    with self.lock:
                        if st.status != QUEUED:
                            continue
                        st.status = ACTIVE
                if me is not None:
                    me.blocked_on = st
                try:
                    self._process(st, depth + 1)
                finally:
                    if me is not None:
                        me.blocked_on = None
        for st in sts:
            if st.status < DONE:
                self._wait(me, st)
        return sts

    def _offer(self, me: TaskState | None, fresh: list[TaskState], inline: bool,
               priorities: list[float] | None) -> None:
        """Under the lock: queue the fresh tasks (all but the first when it runs inline here), by
        urgency when `priorities` are given, and wake idle threads."""
        if self.paths is not None and fresh:
            up = me.up + self.paths.seconds(me.task.key) if me is not None else 0.0
            for st in fresh:
                st.up = up
        asker = _asker_context() if len(fresh) > inline else None
        for i in range(1 if inline else 0, len(fresh)):
            st = fresh[i]
            st.status = QUEUED
            st.context = asker
            self.queue.push(st, priorities[i] if priorities is not None else 0.0)
        if len(fresh) > inline:
            self.hubs.notify()
        if inline and fresh:
            fresh[0].status = ACTIVE

    def _raise(self, me: TaskState | None, st: TaskState) -> None:
        """Under the lock: a queued task that a more urgent one now waits for is queued again at
        that urgency (its old place is skipped: it is no longer queued when reached)."""
        paths = self.paths
        up = me.up + paths.seconds(me.task.key) if me is not None else 0.0    # type: ignore[union-attr]
        if up > st.up:
            st.up = up
            self.queue.push(st, up + paths.below(st.task.key))                  # type: ignore[union-attr]

    def _one(self, me: TaskState | None, task: Task, depth: int) -> TaskState | None:
        """Fast path for one task: its state when it is done or could be brought up to date here,
        inline; None when the general path of `_ensure` must queue it or wait for it."""
        key = task.key
        st = self.states.get(key)
        if st is not None:
            return st if st.status >= DONE else None
        if depth >= MAX_INLINE or self.cancelled is not None:
            return None
        with self.lock:
            if key in self.states:
                return None
            st = self.states[key] = TaskState(task)
            st.status = ACTIVE
        self.tasks.setdefault(key, task)
        if me is None:
            self._process(st, depth + 1)
        else:
            me.blocked_on = st
            try:
                self._process(st, depth + 1)
            finally:
                me.blocked_on = None
        return st if st.status >= DONE else None       # deferred: the caller waits for it

    def _worker_process(self, st: TaskState) -> None:
        self._process(st, 0)

    def _process(self, st: TaskState, depth: int) -> None:
        st.depth = depth
        try:
            if st.deferred:
                self._execute(st)
            elif st.task.key in self.forced or not (self._verify(st) or self._stored_meanwhile(st)):
                if self.paths is not None and self._defer(st):
                    return
                self._execute(st)
        except (Cancelled, KeyboardInterrupt, SystemExit, GreenletExitType):
            raise
        except BaseException as e:  # an engine error becomes this task's failure, never a hang
            log.debug("nbbuild: %r failed in the engine", st.task, exc_info=True)
            st.error, st.outcome = e, "failed"
        self._finish(st, FAILED if st.outcome in ("failed", "skipped", "obsolete") else DONE)

    def version(self, rule: Any) -> Version:
        """The rule's version, computed once per rule per build (globals may change between builds)."""
        v = self.versions.get(rule)
        if v is None:
            v = self.versions[rule] = rule_version(rule.fn, self.build._is_engine_object)
        return v

    def file_hash(self, path: str) -> str:
        return self.files.hash(path)

    def owner(self, key: str) -> tuple[str, str]:
        """The task of this store, as environment.py knows who set a variable."""
        return (self.store.path, key)

    def input_hash(self, key: str, task: str | None = None) -> str:
        """The hash a dependency that is not a task (a file, an environment variable) has now, for
        the task `task` (what it set itself counts at its value before)."""
        if key.startswith(FILE_PREFIX):
            return self.files.hash(key[len(FILE_PREFIX):])
        return inputs.digest(key, self.owner(task) if task is not None else None)

    def _verify(self, st: TaskState) -> bool:
        rule = st.task.rule
        policy = rule.policy
        if policy == "none":
            return False
        version = self.versions.get(rule) or self.version(rule)
        key = st.task.key
        traces = self.traces.get(key) if policy == "persist" else None
        in_memory = self.store.memory_traces.get(key)   # policy "memory", or values that could not be stored
        if in_memory:
            traces = in_memory + traces if traces else in_memory
        if not traces:
            return False
        trace, pos = match(traces, version.version, st, self.known, self._group_matches, self._outputs_ready)
        if trace is None:
            return False
        st.hash, st.trace, st.seconds = trace.result, trace, trace.seconds
        st.outcome = "verified" if pos == 0 else "constructed"
        return True

    def _defer(self, st: TaskState) -> bool:
        """With several threads, a task about to run first has what its last run fetched brought up
        to date, without holding a thread: its body then starts where a thread is free once they
        are done. Started at once, it would fetch them and wait, and a waiting body can only resume
        on the thread it started on (a greenlet), even when that thread is busy and another idle.
        True: deferred (queued again when they are done; `_unstall` if a cycle holds it)."""
        found = self.traces.get(st.task.key)
        keys = found[0].split()[0] if found else ()
        if not keys:
            return False
        tasks = []
        for k in keys:
            dep = self.states.get(k)
            if dep is not None and (dep.status >= DONE or dep is st):
                continue
            t = self.tasks.get(k) or self.build._task_for_key(k)
            if t is not None:
                tasks.append(t)
        if not tasks:
            return False
        paths = self.paths
        up = st.up + paths.seconds(st.task.key)                       # type: ignore[union-attr]
        priorities = {t.key: up + paths.below(t.key) for t in tasks}   # type: ignore[union-attr]
        with self.lock:
            if self.cancelled is not None:
                raise Cancelled("build interrupted")
            fresh: list[TaskState] = []
            pending: list[TaskState] = []
            for t in tasks:
                dep = self.states.get(t.key)
                if dep is None:
                    dep = self.states[t.key] = TaskState(t)
                    self.tasks.setdefault(t.key, t)
                    fresh.append(dep)
                elif dep.status >= DONE or dep is st or dep in pending:
                    continue
                elif dep.status == QUEUED:
                    self._raise(st, dep)
                pending.append(dep)
            if not pending:
                return False
            self._offer(st, fresh, False, [priorities[d.task.key] for d in fresh])
            st.deferred, st.pending = 1, len(pending)
            for dep in pending:
                dep.add_waiter(st)
            self.deferred.append(st)
        return True

    def _stored_meanwhile(self, st: TaskState) -> bool:
        """Before running a task, a look for what other processes sharing the store recorded
        since: a task one of them just ran is reused here rather than run twice."""
        if st.task.rule.policy != "persist" or not self.store.refresh_if_changed():
            return False
        return self._verify(st)

    def _counts(self, st: TaskState, key: str) -> bool:
        """Whether an input is checked for this task: the random generators' state only for a
        target (inputs.for_targets_only): a version another task reads was made from where they
        were then, as plain execution does not run the cell that made it again."""
        return not inputs.for_targets_only(key) or st.task.key in self.targets

    def _group_matches(self, st: TaskState, group: Group) -> bool:
        """Do the dependencies of one recorded group (fetched together) still have their hashes?
        A failed dependency is a mismatch: if the body still needs it, it fails there."""
        if len(group) == 1:
            key, recorded = group[0]
            dep = self.states.get(key)
            if dep is None or dep.status < DONE:
                if key.startswith(INPUT_PREFIX):
                    return not self._counts(st, key) or self.input_hash(key, st.task.key) == recorded
                t = self.tasks.get(key) or self.build._task_for_key(key)
                if t is None:
                    return False
                dep = self._one(st, t, st.depth) or self._ensure(st, (t,), st.depth)[0]
            return dep.status == DONE and dep.hash == recorded
        tasks: list[Task] = []
        for key, recorded in group:
            if key.startswith(INPUT_PREFIX):
                if self._counts(st, key) and self.input_hash(key, st.task.key) != recorded:
                    return False
            else:
                t = self.build._task_for_key(key)
                if t is None:
                    return False
                tasks.append(t)
        deps = self._ensure(st, tasks, st.depth) if tasks else []
        wanted = [rec for key, rec in group if not key.startswith(INPUT_PREFIX)]
        return all(d.status == DONE and d.hash == rec for d, rec in zip(deps, wanted))

    def _outputs_ready(self, st: TaskState, trace: Trace) -> bool:
        """Are the files the trace's run wrote as it left them, once put back from the store? Then
        the environment variables it set are set again. Of those the task was the last to write, or
        all when it is a target (outputs.Owners)."""
        key = st.task.key
        owners = self.build.owners
        mine = owners.mine(key, key in self.targets)
        if trace.outputs:
            put: list[str] = []
            ready = outputs.restore(self.store, self.files.hash, trace, put, mine)
            if put:
                with self.lock:
                    self.restored.setdefault(key, []).extend(put)
            if not ready:
                return False
            owners.claim(key, [o[0] for o in trace.outputs if mine(o[0])])
        if trace.environ:
            effects = [e for e in trace.environ if mine(ENV_PREFIX + e[0])]
            try:
                names = environment.restore(self.owner(key), effects)
            except (OSError, ValueError) as e:   # a value this platform refuses: running it sets what it can
                log.warning("nbbuild: the environment variables %r set could not be set again (%s); it runs again",
                            trace.repr, e)
                return False
            owners.claim(key, [ENV_PREFIX + name for name, _ in effects])
            if names:
                with self.lock:
                    self.environ_restored.setdefault(key, []).extend(names)
        return True

    def _execute(self, st: TaskState) -> None:
        body.execute(self, st)

    # ------------------------------------------------------------ values

    def fetch_values(self, rec: Recorder, tasks: Sequence[Task], record: bool = True) -> list[Any]:
        """A running rule body asks for `tasks`: suspend until their values are there. `record`:
        the group is a dependency of the body now (a body run elsewhere records its groups once
        it succeeded, remote.py)."""
        if self.cancelled is not None:
            rec.cancelled = True
            raise Cancelled("build interrupted")
        me = rec.state
        rec.paused += 1
        start = time.perf_counter()
        try:
            sts = self._ensure(me, tasks, me.depth)
            for st in sts:
                if st.status != DONE:
                    rec.failed_dep = st
                    raise self.error_for(st)
            values = [self._value(st, me) for st in sts]
            if record:
                rec.add_group(tuple((st.task.key, st.hash) for st in sts))
            return values
        except Cancelled:
            rec.cancelled = True     # whatever the body returns now, it is not stored
            raise
        finally:
            rec.paused -= 1
            rec.waited += time.perf_counter() - start

    def _value(self, st: TaskState, me: TaskState | None) -> Any:
        if st.has_value:
            return st.value
        with self.lock:
            busy = st.loading
            if busy:
                st.add_waiter(self.hubs.waker())
            else:
                st.loading = True
        if busy:
            self.hubs.suspend()
            if not st.has_value:
                raise self.error_for(st)
            return st.value
        try:
            found, value = self.build.memory.recall(st.hash, self.checked, st.task)  # type: ignore[arg-type]
            if found:
                st.value, st.has_value = value, True
            else:
                self._execute(st)
                if not st.has_value:
                    st.status = FAILED
                    raise self.error_for(st)
            return st.value
        finally:
            with self.lock:
                st.loading = False
                self.hubs.wake(st.take_waiters())

    # ------------------------------------------------------------ errors

    def chain(self, st: TaskState) -> list[TaskState]:
        """st, then the dependency that made it fail, and so on down to the one whose rule raised."""
        out = [st]
        while out[-1].cause is not None and out[-1].cause not in out:
            out.append(out[-1].cause)
        return out

    def error_for(self, st: TaskState) -> BaseException:
        chain = self.chain(st)
        root = chain[-1]
        if isinstance(root.error, (CycleError, Cancelled)):
            return root.error
        err = root.error
        detail = f"{type(err).__name__}: {err}" if err is not None else "its value could not be had"
        e = BuildError(root.task, [s.task for s in chain], f"{root.task!r} failed: {detail}")
        e.__cause__ = err
        return e


def _asker_context() -> contextvars.Context:
    """The asking task's context, for the tasks it queues: what its body set (the notebook's
    output record, say) reaches them as it would inline; its trace recorder does not."""
    ctx = contextvars.copy_context()
    if ctx.get(current) is not None:
        ctx.run(current.set, None)
    return ctx
