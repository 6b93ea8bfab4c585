"""What a running rule body gets from the scheduler: the values of the tasks it fetches, and for
one that failed, the error that says why.

Contract: `Fetching` is a part of the Scheduler (engine/scheduler.py), mixed in.
- `fetch_values(rec, tasks, record=True)`: a running body asks for `tasks`; its greenlet suspends
  until they are up to date (holding no thread), then their values are loaded (from memory, the
  store, or by running the task when its value cannot be had). With `record`, the group becomes a
  dependency of the body's trace. A failed dependency raises `error_for` of it in the body.
- `chain(st)`: st, then the dependency that made it fail, down to the one whose rule raised.
- `error_for(st)`: that failure as the body sees it: a BuildError naming the chain, caused by the
  rule's own exception (CycleError and Cancelled as they are).
"""
from __future__ import annotations

import time
import threading
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

from ..errors import BuildError, Cancelled, CycleError
from .state import DONE, FAILED, TaskState
from .task import Task
from .trace import Recorder
if TYPE_CHECKING:
    from ..executors.hubs import Hubs, Waker
    from .context import EngineContext

__all__ = ["Fetching"]


class Fetching:
    if TYPE_CHECKING:       # the Scheduler's, which mixes this in (scheduler.py)
        ctx: EngineContext
        lock: threading.Lock
        hubs: Hubs
        checked: set[str]
        cancelled: BaseException | None
        def _ensure(self, me: TaskState | None, tasks: Sequence[Task], depth: int) -> list[TaskState]: ...
        def _execute(self, st: TaskState) -> None: ...

    def fetch_values(self, rec: Recorder, tasks: Sequence[Task], record: bool = True,
                     ref: Callable[[TaskState], Any] | None = None) -> list[Any]:
        """A running rule body asks for `tasks`: suspend until their values are there. `record`:
        the group is a dependency of the body now (a body run elsewhere records its groups once
        it succeeded, executors/kernel.py). `ref(state)`, when given, may stand for a value
        instead of loading it here (a worker reads it from the shared tier itself)."""
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
            values = [self._value(st, me) if ref is None or (r := ref(st)) is None else r for st in sts]
            if record:
                rec.add_group(tuple((st.task.key, cast(str, st.hash)) for st in sts))   # done: hashed
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
            found, value = self.ctx.memory.recall(cast(str, st.hash), self.checked, st.task)   # done: hashed
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
                # while a value loads only greenlets wait on it (a deferred task waits on unfinished ones)
                self.hubs.wake(cast("list[Waker]", st.take_waiters()))

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
