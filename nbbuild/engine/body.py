"""Running one task's body: where (on this thread, or elsewhere through the rule's executor), how
many attempts, what its timeout means, and what becomes of the result (value stored, trace
recorded).

Contract:
- `execute(scheduler, state)` runs the body with a fresh Recorder as `trace.current`, then on
  success hashes and stores the value, stores the files it wrote (outputs.keep: they are part of
  its trace), takes the environment variables it left changed (environment.finish: its trace's
  effects) and records the trace (the rebuilder's `record`: engine/rebuild.py); the state's
  outcome says what happened: "executed", "failed" (its own error), "skipped" (a dependency
  failed), or "obsolete" (a task read back from an old trace whose arguments the rule no longer
  takes). Cancellation
  (KeyboardInterrupt, SystemExit, Cancelled) propagates and stores nothing; so does a body that
  saw its build's cancellation and returned anyway (it caught `Cancelled` with `except
  BaseException`): what it returned is a fallback, not its value.
- A rule's `executor` (else the Build's) runs the body elsewhere (executors/kernel.run_elsewhere); None
  runs it here, on the thread of the greenlet.
- `retries=N`: an attempt that raises (its own error, not a failed dependency or a cancel) is run
  again, up to N more times, each attempt afresh; `state.attempts` counts them (the report lists
  tasks that needed more than one).
- `timeout=` seconds: elsewhere, a body past it is stopped and fails with TimeoutError; here (a
  thread cannot be stopped) it runs on, and is reported as overdue with a warning.
- `engine_work()`: the cyclic garbage collector paused for a build's own work, given back to
  each body while it runs (`scheduler.gc`).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterator

from greenlet import GreenletExit

from . import environment, outputs
from ..store import serialisation
from ..errors import Cancelled
from .state import Outcome, TaskState
from .trace import ENV_PREFIX, Recorder, current
from ..executors.shared_values import SharedValue

if TYPE_CHECKING:
    from ..executors.protocol import Executor
    from .scheduler import Scheduler
    from .task import Task
    from .version import Version

__all__ = ["execute"]

log = logging.getLogger("nbbuild")
_CANCEL = (KeyboardInterrupt, SystemExit, Cancelled, GreenletExit)


def execute(sched: Scheduler, st: TaskState) -> None:
    task = st.task
    rule = task.rule
    if task._args is None and not _fits(task):
        # read back from an old trace, with arguments the rule no longer takes: no such task
        # any more. Dependents see a mismatch and run, asking for what they need now.
        st.outcome = Outcome.OBSOLETE
        return
    version = sched.version(rule) if rule.policy != "none" else None
    executor = sched.ctx.executor_for(rule)
    timeout = rule.timeout
    while True:
        st.attempts += 1
        rec, value, error = _attempt(sched, st, executor, timeout)
        if isinstance(error, _CANCEL):
            raise error
        if rec.cancelled or sched.cancelled is not None:
            # the body saw the cancellation (or ran on while the build was interrupted) and
            # returned all the same: a fallback, not its value
            raise Cancelled("build interrupted")
        if error is None or rec.failed_dep is not None or st.attempts > rule.retries:
            break
        log.warning("nbbuild: %r failed (%s: %s); trying again (%d of %d)", task, type(error).__name__, error,
                    st.attempts + 1, rule.retries + 1)
    if executor is None and timeout is not None and st.seconds > timeout:
        st.overdue = True
        log.warning("nbbuild: %r ran %.1f s, past its timeout of %g s (a body on a thread cannot be stopped: "
                    "give the rule executor='processes' to stop it)", task, st.seconds, timeout)
    if rec.failed_dep is not None:
        st.cause, st.outcome = rec.failed_dep, Outcome.SKIPPED
        return
    if error is not None:
        st.error, st.outcome = error, Outcome.FAILED
        return
    _keep(sched, st, rec, value, version)


def _attempt(sched: Scheduler, st: TaskState, executor: Executor | None, timeout: float | None) -> tuple[Recorder, Any, BaseException | None]:
    task = st.task
    rec = Recorder(st, sched)
    token = current.set(rec)
    start = time.perf_counter()
    value: Any = None
    error: BaseException | None = None
    sched.running[task.key] = (st, start)
    environment.forget(sched.owner(task.key))    # what its last run set is an input of this one
    if sched.gc:
        gc.enable()
    try:
        if executor is None:
            value = task.run()
        else:
            from ..executors.kernel import run_elsewhere
            value = run_elsewhere(executor, sched, st, rec, timeout)
    except BaseException as e:
        error = e
    finally:
        gc.disable()
        current.reset(token)
        sched.running.pop(task.key, None)
    st.seconds = time.perf_counter() - start - rec.waited
    return rec, value, error


def _keep(sched: Scheduler, st: TaskState, rec: Recorder, value: Any, version: Version | None) -> None:
    task = st.task
    rule = task.rule
    persist = rule.policy == "persist"
    effects = environment.finish(sched.owner(task.key), rec) if rec.env_set else ()
    if isinstance(value, SharedValue):
        # a worker put it in the shared tier: its trace is recorded here, its value loaded only
        # when something here needs it (from the tier, into the local store)
        st.hash, st.outcome = value.digest, Outcome.EXECUTED
        if rec.attachment is not None:
            sched.ctx.attachments.keep(task, value.digest, rec.attachment, persist)
        _record(sched, st, rec, version, effects, persist)
        return
    try:
        ser: serialisation.Serialized | None = serialisation.pickle_value(value)
    except serialisation.UnserializableValue as e:
        ser, persist = None, False
        st.unstored = str(e)
    if ser is not None and persist and version is not None:
        why_not = sched.store.put_value(ser)    # a large value is hashed while it is written
        if why_not is not None:
            st.unstored = why_not
    digest = ser.digest if ser is not None else "u:" + uuid.uuid4().hex
    previous = st.hash
    st.value, st.has_value, st.hash, st.outcome = value, True, digest, Outcome.EXECUTED
    if previous is not None and previous != digest:
        log.warning("nbbuild: %r gave a different value when re-run (is it deterministic?)", task)
    sched.ctx.memory.remember(digest, value, ser.nbytes if ser is not None else 0)
    if rec.attachment is not None:
        sched.ctx.attachments.keep(task, digest, rec.attachment, persist and not st.unstored)
    _record(sched, st, rec, version, effects, persist)


def _record(sched: Scheduler, st: TaskState, rec: Recorder, version: Version | None, effects: tuple,
            persist: bool) -> None:
    """The files the run wrote, then its trace (of the value `st.hash`)."""
    task = st.task
    if version is None:
        return
    # the files it wrote go in before the trace that names them, as its value does
    written = outputs.keep(sched.store, rec.made, persist, rec.removed) if rec.made or rec.removed else ()
    sched.ctx.owners.claim(task.key, [o[0] for o in written] + [ENV_PREFIX + name for name, _ in effects])
    sched.rebuilder.record(st, rec, version, written, effects, persist)


def _fits(task: Task) -> bool:
    try:
        return task.rule.accepts(task.args, task.kwargs)
    except Exception:  # arguments that cannot be read back at all
        return False


@contextlib.contextmanager
def engine_work() -> Iterator[bool]:
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
