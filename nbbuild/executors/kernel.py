"""The kernel's side of a rule body run elsewhere (a process pool, a Dask cluster): sending it,
serving what it asks for, and taking back what it did (executors/worker.py is the other side).

Contract: `run_elsewhere(executor, scheduler, state, recorder, timeout)` runs one task's body
through an executor (executors/pools.py) and returns its value, or raises its exception (the
worker's traceback attached as a note, with the lines of the notebook's cells). The greenlet that
waits holds no thread; a cancelled build cancels the work elsewhere; a timeout stops it. What the
body fetched, read and wrote becomes the recorder's as if it had run here; what it attached
(`trace.attach`) is kept, and a rule's `received(task, value, attachment)`, when it has one, is
called here with them (the notebook shows what a cell printed in a worker). What comes back is
loaded here as a stored value is (store/pickling.py): a function of `__main__` that the body made reads
this process's `__main__` (the notebook), not the worker's copy.
"""
from __future__ import annotations

import linecache
import logging
import os
import threading
import traceback
import types
from typing import TYPE_CHECKING, Any, Callable, cast

import cloudpickle

from ..engine.code import global_names
from ..errors import Cancelled
from ..engine.trace import INPUT_PREFIX
from ..store import pickling
from .messages import Done, Dropped, GiveUp, Message, Need, Raised, Result, SendAgain, Values
from .shared_values import SharedValue
from .worker import WorkerError

if TYPE_CHECKING:
    from ..engine.scheduler import Scheduler
    from ..engine.state import TaskState
    from ..engine.task import Task
    from ..engine.trace import Recorder
    from .hubs import Waker
    from .protocol import Executor, Job

__all__ = ["run_elsewhere"]

log = logging.getLogger("nbbuild")

def _worker_traceback(frames: list, last: str, fn: Any) -> str:
    """cloudpickle names the files of the functions it ships by value "<dynamic-code>": here they
    are the files (a notebook's cells) of the body's own functions, by name, with their lines."""
    files = _files_of(fn)
    lines = []
    for name, lineno, where, line in frames:
        name = files.get(where, name) if name == "<dynamic-code>" else name
        lines.append((name, lineno, where, line or linecache.getline(name, lineno).strip()))
    return ("Traceback (most recent call last), in the worker:\n"
            + "".join(traceback.StackSummary.from_list(lines).format()) + last)


def run_elsewhere(executor: Executor, sched: Scheduler, st: TaskState, rec: Recorder, timeout: float | None = None) -> Any:
    task = st.task
    supplied: dict[str, Any] = {}
    shared = _shared_url(executor, sched, task)
    for group in _recorded_groups(sched, task.key):   # what it fetched last time: sent with it
        try:
            values = sched.fetch_values(rec, group, record=False, ref=_ref(sched, shared))
        except Exception:  # a dependency that failed: the body asks again if it still needs it
            rec.failed_dep = None
            continue
        supplied.update(zip((t.key for t in group), values))
    while True:
        result = _one_run(executor, sched, task, rec, supplied, timeout, shared)
        if not isinstance(result, Need):
            break
        tasks = _tasks(sched, result.asked)     # it was stopped, to be sent again with these
        values = sched.fetch_values(rec, tasks, record=False, ref=_ref(sched, shared))
        supplied.update(zip((t.key for t in tasks), values))
    if isinstance(result, Raised):
        error = result.error
        if result.frames:
            where = _worker_traceback(result.frames, result.last, task.rule.fn).rstrip()
            if hasattr(error, "add_note"):       # Python 3.11: shown under the traceback
                error.add_note(where)
            else:
                log.warning("nbbuild: %r failed; %s", task, where)
        raise error
    if isinstance(result, Dropped):       # a dependency failed after all: fetch_values has said so above
        raise WorkerError(f"{task!r} was abandoned by its worker")
    value, groups, files, attachment, inputs, written = (result.value, result.groups, result.files, result.attachment,
                                                         result.inputs, result.written)
    for keys in groups:
        rec.add_group(tuple((key, cast(str, sched.states[key].hash)) for key in keys))   # fetched: hashed
    for path in files:
        rec.read_file(path)
    for key, digest in inputs:
        rec.read_input(key, digest)
    for path, whole in written.items():      # the worker's paths: a filesystem shared with it, as for reads
        rec.wrote_file(path, whole)
    rec.attachment = attachment
    sharing = sched.store.sharing
    if isinstance(value, SharedValue) and sharing is not None:   # the worker put it in the shared tier: recorded, not loaded
        sharing.made_elsewhere(value.digest)
    if task.rule.received is not None:
        task.rule.received(task, value, attachment)
    return value


def _files_of(fn: Any, depth: int = 3) -> dict[str, str]:
    """Function name -> its file, for the body and the functions it reaches (a few calls deep)."""
    found: dict[str, str] = {}
    todo, seen = [(fn, 0)], set()
    while todo:
        f, level = todo.pop()
        code = getattr(f, "__code__", None)
        if code is None or id(code) in seen:
            continue
        seen.add(id(code))
        stack = [code]
        while stack:
            c = stack.pop()
            found.setdefault(c.co_name, c.co_filename)
            stack += [k for k in c.co_consts if isinstance(k, types.CodeType)]
        if level < depth:
            scope = getattr(f, "__globals__", {})
            todo += [(scope[chain[0]], level + 1) for chain in global_names(code)
                     if isinstance(scope.get(chain[0]), types.FunctionType)]
    return found


def _culprit(fn: Any) -> str:
    """Which global of the body does not pickle, said as ", from global NAME", if one is to blame."""
    code, scope = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    for name in dict.fromkeys(chain[0] for chain in (global_names(code) if code is not None else ())):
        if name in scope:
            try:
                cloudpickle.dumps(scope[name])
            except Exception:  # this is the one
                return f", from global {name!r}"
    return ""


def _tasks(sched: Scheduler, asked: bytes) -> list[Task]:
    return [sched.ctx.rules[name].task(*args, **kwargs) for name, args, kwargs in cloudpickle.loads(asked)]


def _shared_url(executor: Executor, sched: Scheduler, task: Task) -> str | None:
    """Where a body on Dask reads and writes its large values (executors/shared_values.py): the
    store's shared tier, unless the tier is read-only or the rule's value must come back here
    whole anyway (a notebook cell's, whose names are bound in the kernel: Rule.received)."""
    sharing = sched.store.sharing
    if executor.kind != "dask" or sharing is None or sharing.readonly or task.rule.received is not None:
        return None
    return sharing.tier.url


def _ref(sched: Scheduler, shared: str | None) -> Callable[[TaskState], SharedValue | None] | None:
    """For fetch_values: a large value the shared tier holds goes to the worker by hash, unloaded."""
    sharing = sched.store.sharing
    if shared is None or sharing is None:
        return None

    def ref(st: TaskState) -> SharedValue | None:
        if st.has_value or not st.hash or not sharing.holds_object(st.hash):
            return None
        return SharedValue(shared, st.hash, 0)
    return ref


def _one_run(executor: Executor, sched: Scheduler, task: Task, rec: Recorder, supplied: dict, timeout: float | None,
             shared: str | None = None) -> Result:
    # our own worker processes get the kernel's environment with each body; a cluster's workers
    # (other machines) keep their own, and what a body reads there is what its trace records
    rec.paused += 1        # engine work: not the body's read of the whole environment
    try:
        environ = dict(os.environ) if executor.kind == "processes" else None
    finally:
        rec.paused -= 1
    try:
        payload = cloudpickle.dumps((task.rule.fn, task.args, task.kwargs, supplied, environ, shared))
    except Exception as e:  # a global it reads, an argument or a value that does not pickle
        raise WorkerError(f"{task!r} cannot be sent to its worker: {type(e).__name__}: {e}"
                          f"{_culprit(task.rule.fn)} (what runs elsewhere must pickle; or run it on threads)") from None
    job = executor.start(payload, timeout, repr(task))
    waiter = _Waiter(sched, job)
    try:
        while True:
            message = waiter.next()
            if not isinstance(message, Need):
                return pickling.loads(job.result())    # Done (as a value is loaded: __main__'s functions read ours)
            if not executor.hold():
                job.answer(SendAgain())
                continue
            try:
                tasks = _tasks(sched, message.asked)
                values = sched.fetch_values(rec, tasks, record=False, ref=_ref(sched, shared))
            except BaseException:
                job.answer(GiveUp())
                raise
            finally:
                executor.release()
            job.answer(Values(cloudpickle.dumps(dict(zip((t.key for t in tasks), values)))))
    except BaseException:
        job.stop()
        raise
    finally:
        waiter.close()


class _Waiter:
    """Hands the job's messages to its greenlet: a thread blocks on the job's requests (and its
    end) and wakes the greenlet, but only while it waits for one (a wake while it waits for a
    dependency would resume it too early)."""

    def __init__(self, sched: Scheduler, job: Job):
        self.sched, self.job = sched, job
        self.inbox: list[Message] = []
        self.lock = threading.Lock()
        self.waker: Waker | None = None
        self.thread = threading.Thread(target=self._watch, name="nbbuild-elsewhere", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while True:
            message = self.job.next()
            with self.lock:
                self.inbox.append(message)
                waker, self.waker = self.waker, None
            if waker is not None:
                self.sched.hubs.wake_from_outside(waker)
            if isinstance(message, Done):
                return

    def next(self) -> Message:
        sched = self.sched
        while True:
            with self.lock:
                if self.inbox:
                    return self.inbox.pop(0)
                self.waker = sched.hubs.waker()
            with sched.lock:                  # so that an interrupt wakes it too (it then stops the job)
                if sched.cancelled is not None:
                    # interrupted while it was awake (on another thread): no one would wake it again
                    raise Cancelled("build interrupted")
                sched.waiting_elsewhere[id(self)] = self.waker
            try:
                sched.hubs.suspend()
            finally:
                with sched.lock:
                    sched.waiting_elsewhere.pop(id(self), None)

    def close(self) -> None:
        with self.lock:
            self.waker = None


def _recorded_groups(sched: Scheduler, key: str) -> list[list[Task]]:
    found = sched.traces.get(key)
    if not found:
        return []
    groups = []
    for group in found[0].deps:
        tasks = [sched.tasks.get(k) or sched.ctx.task_for_key(k) for k, _ in group if not k.startswith(INPUT_PREFIX)]
        known = [t for t in tasks if t is not None]
        if known and len(known) == len(tasks):
            groups.append(known)
    return groups


