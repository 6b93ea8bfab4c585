"""The suspending scheduler: one build, top-down, dependencies discovered as rule bodies run.

Contract:
- `Scheduler(context, workers, order).run(tasks)` brings the tasks up to date and returns their `TaskState`s; every
  task runs at most once per build; a task's value is loaded only when a target or a running rule
  needs it (verifying needs only dependencies' hashes).
- Concurrency (the threads and greenlets are executors/hubs.Hubs): a task that waits for a dependency
  suspends its greenlet and so holds no thread. A fresh dependency is processed inline on the
  asking greenlet (cheap: no switch on the no-op path) until the nesting reaches `MAX_INLINE`;
  deeper, it is queued and a hub starts it at the bottom of a stack, so neither deep chains nor
  wide fan-outs grow one stack without bound. Of a group fetched together, all but the first are offered to other threads first
  (help-first), then taken back if nobody started them. With several threads, the group is
  ordered by the longest recorded path through each task (priority.py): the asking greenlet
  takes the most urgent, and idle threads start queued tasks most urgent first (`order="fifo"`
  keeps the order of asking). A queued task starts in a copy of the context of the task
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
- What it uses of the Build is its engine context (engine/context.py), nothing else; `rules_owner` is
  the context's, for a rule to tell a fetch from a running body of this build.
The Scheduler is composed of parts, each its own module: what one task's state is
(engine/state.py), the rebuilder that verifies a task against its traces and records them
(engine/rebuild.py: `rebuilder`; `version`, `owner`, `file_hash`, `known`, `versions`, `restored`
and `environ_restored` are its), the values a running body fetches (engine/fetch.py), and
running its body (engine/body.py).
"""
from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any, Sequence, cast

from greenlet import GreenletExit as GreenletExitType

from . import body
from ..errors import BuildError, Cancelled, CycleError
from ..executors.hubs import Hubs, Waker
from .context import EngineContext
from .fetch import Fetching
from .priority import CriticalPath, ReadyQueue
from .state import ACTIVE, DONE, FAILED, QUEUED, UNFINISHED, Outcome, Status, TaskState
from .task import Task
from .trace import current
from .rebuild import Rebuilder

__all__ = ["Scheduler", "TaskState"]

log = logging.getLogger("nbbuild")
MAX_INLINE = 24


class Scheduler(Fetching):
    def __init__(self, context: EngineContext, workers: int = 1, order: str = "critical-path"):
        self.ctx = context
        self.rules_owner = context.owner
        self.store = context.store
        self.files = context.files
        self.states: dict[str, TaskState] = {}
        self.order: list[TaskState] = []
        self.lock = threading.Lock()
        self.traces = self.store.traces_index()
        # which queued task an idle thread starts: the longest recorded path first (one thread: no choice)
        critical = workers > 1 and order == "critical-path"
        self.paths = CriticalPath(self.traces) if critical else None
        self.queue = ReadyQueue(self.paths)
        self.hubs = Hubs(context.pool, max(0, workers - 1), self.lock, self._take, self._worker_process,
                         self._unstall if critical else None)
        self.deferred: list[TaskState] = []     # tasks waiting for what their last run fetched
        self.tasks: dict[str, Task] = context.tasks
        rb = self.rebuilder = Rebuilder(context, self.traces, self._bring)
        self.version, self.owner, self.file_hash = rb.version, rb.owner, rb.file_hash
        self.versions = rb.versions
        self.known = rb.known                    # key -> value hash of every task done in this build
        self.checked: set[str] = set()
        self.forced: set[str] = set()            # keys that run even if up to date (build(force=True))
        self.cancelled: BaseException | None = None
        self.targets: frozenset[str] = frozenset()     # keys of the tasks this build was asked for
        self.running: dict[str, tuple[TaskState, float]] = {}   # bodies running now, read by views
        self.waiting_elsewhere: dict[int, Any] = {}   # greenlets waiting on bodies run elsewhere (executors/kernel.py)
        self.gc = False
        self.restored = rb.restored                  # task key -> files put back from the store
        self.environ_restored = rb.environ_restored  # task key -> environment variables set again
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
        self.targets = self.rebuilder.targets = frozenset(t.key for t in tasks)
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

    def _finish(self, st: TaskState, status: Status) -> None:
        with self.lock:
            st.status = status
            self.order.append(st)
            if status == DONE:
                self.known[st.task.key] = cast(str, st.hash)     # done: hashed
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
        assert paths is not None        # tasks are deferred only when ordered by critical path
        self.queue.push(st, max(st.up, paths.above(st.task.key)) + paths.seconds(st.task.key))
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
        wakers: list[Waker] = []
        with self.lock:
            self.cancelled = exc
            for st in self.states.values():
                if st.status < DONE:
                    st.status = FAILED
                    st.error = Cancelled("build interrupted")
                    wakers.extend(w for w in st.take_waiters() if not isinstance(w, TaskState))
            wakers.extend(self.waiting_elsewhere.values())     # bodies waiting on work elsewhere
        self.hubs.cancel(exc, wakers)

    # ------------------------------------------------------------ the engine

    def _state_for(self, t: Task) -> tuple[TaskState, bool]:
        """Task t's state in this build, and whether it was made now (t is then remembered by
        key); called with the lock held."""
        st = self.states.get(t.key)
        if st is not None:
            return st, False
        st = self.states[t.key] = TaskState(t)
        self.tasks.setdefault(t.key, t)
        return st, True

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
                st, new = self._state_for(t)
                if new:
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
            assert paths is not None
            up = me.up + paths.seconds(me.task.key) if me is not None else 0.0
            priorities = [up + paths.below(st.task.key) for st in fresh]
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
        assert paths is not None        # urgencies change only when ordered by critical path
        up = me.up + paths.seconds(me.task.key) if me is not None else 0.0
        if up > st.up:
            st.up = up
            self.queue.push(st, up + paths.below(st.task.key))

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
            elif st.task.key in self.forced or not (self.rebuilder.verify(st) or self.rebuilder.stored_meanwhile(st)):
                if self.paths is not None and self._defer(st):
                    return
                self._execute(st)
        except (Cancelled, KeyboardInterrupt, SystemExit, GreenletExitType):
            raise
        except BaseException as e:  # an engine error becomes this task's failure, never a hang
            log.debug("nbbuild: %r failed in the engine", st.task, exc_info=True)
            st.error, st.outcome = e, Outcome.FAILED
        self._finish(st, FAILED if st.outcome in UNFINISHED else DONE)

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
            t = self.tasks.get(k) or self.ctx.task_for_key(k)
            if t is not None:
                tasks.append(t)
        if not tasks:
            return False
        paths = self.paths
        assert paths is not None        # tasks are deferred only when ordered by critical path
        up = st.up + paths.seconds(st.task.key)
        priorities = {t.key: up + paths.below(t.key) for t in tasks}
        with self.lock:
            if self.cancelled is not None:
                raise Cancelled("build interrupted")
            fresh: list[TaskState] = []
            pending: list[TaskState] = []
            for t in tasks:
                dep, new = self._state_for(t)
                if new:
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

    def _execute(self, st: TaskState) -> None:
        body.execute(self, st)

    def _bring(self, me: TaskState, tasks: Sequence[Task]) -> list[TaskState]:
        """The rebuilder's `bring`: dependencies of `me` brought up to date as its trace is checked."""
        return self._ensure(me, tasks, me.depth)


def _asker_context() -> contextvars.Context:
    """The asking task's context, for the tasks it queues: what its body set (the notebook's
    output record, say) reaches them as it would inline; its trace recorder does not."""
    ctx = contextvars.copy_context()
    if ctx.get(current) is not None:
        ctx.run(current.set, None)
    return ctx
