"""Rule bodies run elsewhere (a process pool, a Dask cluster): what is shipped, how fetches inside
such a body work, and what comes back. The store, the traces and the scheduling stay here.

Design: the body is shipped with cloudpickle (functions and lambdas of a notebook go by value),
together with the values of the dependencies its newest trace says it fetches. A fetch of
anything else asks the kernel over a channel (a queue of the executor's) and blocks until the
answer comes: the kernel fetches those tasks like any dependency (suspending only this task's
greenlet) and sends their values. So a body runs once, as on a thread. Its fetches, in its own
order, and the files it read become the trace.

Contract:
- `run(payload, channel) -> bytes` is what a worker runs: `payload` is cloudpickle of (function,
  args, kwargs, {task key: value}, the kernel's environment for a worker process of ours, else
  None); it returns cloudpickle of ("ok", value, groups fetched, files
  read, what it attached, the environment variables it read with their hashes in the worker, files
  it wrote, each with whether it wrote it whole: stored from here, outputs.py),
  ("error", exception, its frames outside nbbuild, its last line),
  ("abandoned",) when a dependency failed (or the kernel stopped it before it began), or
  ("need", tasks) when it was told to stop and be sent again.
- A worker kept waiting holds a process of the pool: the executor's `hold()` says whether one more
  may wait (one slot always stays free for what they wait for, so nothing deadlocks). When not,
  the body is stopped and sent again with what it asked for: it then runs more than once, as
  restarting schedulers do; with enough processes for the nesting of remote calls it runs once.
- In a worker a Rule is a stub (`rule.rule_stub`) with the same `task()` (keys are identical) whose
  calls are served from the values sent or asked for; `nbbuild.file` and `open` record reads.
- `run_elsewhere(executor, scheduler, state, recorder, timeout)` runs one task's body through an
  executor (executors.ProcessExecutor, executors.DaskExecutor) and returns its value, or raises
  its exception (the remote traceback attached as a note). The greenlet that waits holds no
  thread; a cancelled build cancels the remote work; a timeout stops it. What the body attached
  (`trace.attach`) is kept as if it had run here, and a rule's `received(task, value, attachment)`,
  when it has one, is called here with them (the notebook shows what a cell printed in a worker).
  What comes back is loaded here as a stored value is (pickling.py): a function of `__main__`
  that the body made reads this process's `__main__` (the notebook), not the worker's copy.
"""
from __future__ import annotations

import linecache
import logging
import os
import threading
import traceback
import types
from typing import Any

import cloudpickle

from ..store import serialisation, pickling
from ..engine.rule import ELSEWHERE
from ..engine.trace import INPUT_PREFIX, current

__all__ = ["run", "run_elsewhere", "Abandoned", "RemoteError"]

log = logging.getLogger("nbbuild")
_INSTALLED = False


class RemoteError(Exception):
    """A rule's exception that could not be sent back as it was (it does not pickle)."""


class Abandoned(BaseException):
    """Inside a remote body: a dependency it asked for failed. A BaseException, so that a body's
    own `except Exception` does not swallow it."""


class Restart(BaseException):
    """Inside a remote body: the kernel will not keep this worker waiting (every other one waits
    already: the dependency would have nowhere to run). The body stops; it is sent again with
    the values it asked for."""

    def __init__(self, tasks: bytes):
        super().__init__("sent again with its dependencies")
        self.tasks = tasks


class _RemoteRecorder:
    """`trace.current` in a worker: rule calls are served from the values sent, else asked for
    over the channel; reads are noted."""

    def __init__(self, supplied: dict[str, Any], channel: Any):
        self.supplied, self.channel = supplied, channel
        self.scheduler = self
        self.build = ELSEWHERE
        self.paused = 0
        self.attachment = None
        self.groups: list[list[str]] = []
        self.files: list[str] = []
        self.inputs: list[tuple[str, str]] = []    # environment variables, as the worker had them
        self.seen: set[str] = set()
        self.written: dict[str, bool] = {}      # path -> written whole (trace.Recorder.wrote_file)
        self.env_set: dict[str, Any] = {}       # variables it set: name -> value before (environment.py)

    def fetch_values(self, rec: Any, tasks: list) -> list[Any]:
        missing = [t for t in tasks if t.key not in self.supplied]
        if missing:
            asked = cloudpickle.dumps([(t.rule.name, t.args, t.kwargs) for t in missing])
            answer = self.channel.ask(("need", asked))
            if answer[0] == "restart":
                raise Restart(asked)
            if answer[0] != "values":
                raise Abandoned()
            self.supplied.update(cloudpickle.loads(answer[1]))
        self.groups.append([t.key for t in tasks])
        return [self.supplied[t.key] for t in tasks]

    def read_file(self, path: str) -> None:
        if path not in self.files:
            self.files.append(path)

    def wrote_file(self, path: str, whole: bool = True) -> None:
        self.written[path] = self.written.get(path, False) or whole

    def read_input(self, key: str, digest: str) -> None:
        if key not in self.seen:
            self.seen.add(key)
            self.inputs.append((key, digest))

    def wrote_input(self, key: str, name: str | None = None, before: Any = None) -> None:
        self.seen.add(key)     # what it sets stays in the worker: the kernel's environment keeps no effect
        if name is not None:
            self.env_set.setdefault(name, before)


def run(payload: bytes, channel: Any) -> bytes:
    global _INSTALLED
    if not _INSTALLED:
        from ..engine import environment, files
        files.install_hook()
        environment.install()
        _INSTALLED = True
    if channel.stopped():     # stopped before it began: it does not begin
        channel.done()
        return cloudpickle.dumps(("abandoned",))
    fn, args, kwargs, supplied, environ = cloudpickle.loads(payload)
    if environ is not None:
        _take_environment(environ)
    rec = _RemoteRecorder(supplied, channel)
    token = current.set(rec)
    try:
        value = fn(*args, **kwargs)
        out: tuple = ("ok", value, rec.groups, rec.files, rec.attachment, rec.inputs, rec.written)
    except Abandoned:
        out = ("abandoned",)
    except Restart as e:
        out = ("need", e.tasks)
    except Exception as e:  # the rule's own error, sent back to fail its task there
        out = ("error", e, _frames(e), "".join(traceback.format_exception_only(type(e), e)))
    finally:
        current.reset(token)
    try:
        return _sendable(out)
    finally:
        channel.done()


def _take_environment(environ: dict[str, str]) -> None:
    """A worker process of ours starts with the environment the kernel had then: the body sees
    the kernel's as it is now (a variable set or unset since), as it would on a thread."""
    for name in [n for n in os.environ if n not in environ]:
        del os.environ[name]
    for name, value in environ.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _sendable(out: tuple) -> bytes:
    try:
        return cloudpickle.dumps(out)
    except Exception as e:  # a value or an exception that does not pickle
        if out[0] == "ok":
            return cloudpickle.dumps(("error", RemoteError(f"its value cannot be sent back: {e}"), [], ""))
        return cloudpickle.dumps(("error", RemoteError(f"{type(out[1]).__name__}: {out[1]}"), out[2], out[3]))


def _frames(error: BaseException) -> list[tuple[str, int, str, str]]:
    """The body's frames of the traceback (not the engine's): the kernel shows them with the
    lines of its cells, which a worker does not have."""
    own = os.path.dirname(os.path.abspath(__file__))
    return [(f.filename, f.lineno or 0, f.name, f.line or "") for f in traceback.extract_tb(error.__traceback__)
            if not os.path.abspath(f.filename).startswith(own + os.sep)]


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


def run_elsewhere(executor: Any, sched: Any, st: Any, rec: Any, timeout: float | None = None) -> Any:
    task = st.task
    supplied: dict[str, Any] = {}
    for group in _recorded_groups(sched, task.key):   # what it fetched last time: sent with it
        try:
            values = sched.fetch_values(rec, group, record=False)
        except Exception:  # a dependency that failed: the body asks again if it still needs it
            rec.failed_dep = None
            continue
        supplied.update(zip((t.key for t in group), values))
    while True:
        result = _one_run(executor, sched, task, rec, supplied, timeout)
        if result[0] != "need":
            break
        tasks = _tasks(sched, result[1])     # it was stopped, to be sent again with these
        values = sched.fetch_values(rec, tasks, record=False)
        supplied.update(zip((t.key for t in tasks), values))
    kind = result[0]
    if kind == "error":
        error = result[1]
        if result[2]:
            where = _worker_traceback(result[2], result[3], task.rule.fn).rstrip()
            if hasattr(error, "add_note"):       # Python 3.11: shown under the traceback
                error.add_note(where)
            else:
                log.warning("nbbuild: %r failed; %s", task, where)
        raise error
    if kind == "abandoned":       # a dependency failed after all: fetch_values has said so above
        raise RemoteError(f"{task!r} was abandoned by its worker")
    _, value, groups, files, attachment, inputs, written = result
    for group in groups:
        rec.add_group(tuple((key, sched.states[key].hash) for key in group))
    for path in files:
        rec.read_file(path)
    for key, digest in inputs:
        rec.read_input(key, digest)
    for path, whole in written.items():      # the worker's paths: a filesystem shared with it, as for reads
        rec.wrote_file(path, whole)
    rec.attachment = attachment
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
            todo += [(scope[chain[0]], level + 1) for chain in serialisation.global_names(code)
                     if isinstance(scope.get(chain[0]), types.FunctionType)]
    return found


def _culprit(fn: Any) -> str:
    """Which global of the body does not pickle, said as ", from global NAME", if one is to blame."""
    code, scope = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    for name in dict.fromkeys(chain[0] for chain in (serialisation.global_names(code) if code is not None else ())):
        if name in scope:
            try:
                cloudpickle.dumps(scope[name])
            except Exception:  # this is the one
                return f", from global {name!r}"
    return ""


def _tasks(sched: Any, asked: bytes) -> list[Any]:
    return [sched.build.rules[name].task(*args, **kwargs) for name, args, kwargs in cloudpickle.loads(asked)]


def _one_run(executor: Any, sched: Any, task: Any, rec: Any, supplied: dict, timeout: float | None) -> tuple:
    # our own worker processes get the kernel's environment with each body; a cluster's workers
    # (other machines) keep their own, and what a body reads there is what its trace records
    rec.paused += 1        # engine work: not the body's read of the whole environment
    try:
        environ = dict(os.environ) if executor.kind == "processes" else None
    finally:
        rec.paused -= 1
    try:
        payload = cloudpickle.dumps((task.rule.fn, task.args, task.kwargs, supplied, environ))
    except Exception as e:  # a global it reads, an argument or a value that does not pickle
        raise RemoteError(f"{task!r} cannot be sent to its worker: {type(e).__name__}: {e}"
                          f"{_culprit(task.rule.fn)} (what runs elsewhere must pickle; or run it on threads)") from None
    job = executor.start(payload, timeout, repr(task))
    waiter = _Waiter(sched, job)
    try:
        while True:
            message = waiter.next()
            if message[0] != "need":
                return pickling.loads(job.result())    # "done" (as a value is loaded: __main__'s functions read ours)
            if not executor.hold():
                job.answer(("restart",))
                continue
            try:
                tasks = _tasks(sched, message[1])
                values = sched.fetch_values(rec, tasks, record=False)
            except BaseException:
                job.answer(("failed",))
                raise
            finally:
                executor.release()
            job.answer(("values", cloudpickle.dumps(dict(zip((t.key for t in tasks), values)))))
    except BaseException:
        job.stop()
        raise
    finally:
        waiter.close()


class _Waiter:
    """Hands the job's messages to its greenlet: a thread blocks on the job's requests (and its
    end) and wakes the greenlet, but only while it waits for one (a wake while it waits for a
    dependency would resume it too early)."""

    def __init__(self, sched: Any, job: Any):
        self.sched, self.job = sched, job
        self.inbox: list[tuple] = []
        self.lock = threading.Lock()
        self.waker: Any = None
        self.thread = threading.Thread(target=self._watch, name="nbbuild-remote", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while True:
            message = self.job.next()
            with self.lock:
                self.inbox.append(message)
                waker, self.waker = self.waker, None
            if waker is not None:
                self.sched.hubs.wake_from_outside(waker)
            if message[0] == "done":
                return

    def next(self) -> tuple:
        sched = self.sched
        while True:
            with self.lock:
                if self.inbox:
                    return self.inbox.pop(0)
                self.waker = sched.hubs.waker()
            with sched.lock:                  # so that an interrupt wakes it too (it then stops the job)
                sched.waiting_elsewhere[id(self)] = self.waker
            try:
                sched.hubs.suspend()
            finally:
                with sched.lock:
                    sched.waiting_elsewhere.pop(id(self), None)

    def close(self) -> None:
        with self.lock:
            self.waker = None


def _recorded_groups(sched: Any, key: str) -> list[list[Any]]:
    found = sched.traces.get(key)
    if not found:
        return []
    groups = []
    for group in found[0].deps:
        tasks = [sched.tasks.get(k) or sched.build._task_for_key(k) for k, _ in group if not k.startswith(INPUT_PREFIX)]
        if tasks and all(t is not None for t in tasks):
            groups.append(tasks)
    return groups


