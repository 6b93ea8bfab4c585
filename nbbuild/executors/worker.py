"""The worker's side of a rule body run elsewhere (a process pool, a Dask cluster): what runs
there, how fetches inside such a body work, and what goes back.

Design: the body is shipped with cloudpickle (functions and lambdas of a notebook go by value),
together with the values of the dependencies its newest trace says it fetches. A fetch of
anything else asks the kernel over a channel (a queue of the executor's) and blocks until the
answer comes (executors/kernel.py fetches those tasks like any dependency and sends their values).
So a body runs once, as on a thread. Its fetches, in its own order, and the files it read become
the trace. The store, the traces and the scheduling stay in the kernel.

Contract:
- `run(payload, channel) -> bytes` is what a worker runs: `payload` is cloudpickle of (function,
  args, kwargs, {task key: value}, the kernel's environment for a worker process of ours, else
  None, the shared tier's location when values go through it, else None: then a value sent may
  be a `SharedValue` (executors/shared_values.py), read from the tier when the body asks for it,
  and a large result is written there and sent back as one); it returns cloudpickle of a
  `messages.Result`: Finished (the value, the groups fetched, files read, what it attached, the
  environment variables it read with their hashes in the worker, files it wrote, each with
  whether it wrote it whole: stored from here, engine/outputs.py), Raised (the exception, its
  frames outside nbbuild, its last line), Dropped when a dependency failed (or the kernel
  stopped it before it began), or Need when it was told to stop and be sent again.
- A worker kept waiting holds a process of the pool: the executor's `hold()` says whether one more
  may wait (one slot always stays free for what they wait for, so nothing deadlocks). When not,
  the body is stopped (`Restart`) and sent again with what it asked for: it then runs more than
  once, as restarting schedulers do; with enough processes for the nesting of calls elsewhere it
  runs once.
- In a worker a Rule is a stub (`rule.rule_stub`) with the same `task()` (keys are identical) whose
  calls are served from the values sent or asked for; `nbbuild.file` and `open` record reads.
- `WorkerError` stands for a body's exception or value that could not be sent back as it was.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

import cloudpickle

from ..engine.rule import ELSEWHERE
from ..engine.trace import current
from .messages import Dropped, Finished, Need, Raised, Result, SendAgain, Values
from .protocol import Channel
from .shared_values import SharedValue, offer, resolve

__all__ = ["run", "Abandoned", "Restart", "WorkerError"]

log = logging.getLogger("nbbuild")
_INSTALLED = False


class WorkerError(Exception):
    """A rule's exception that could not be sent back as it was (it does not pickle)."""


class Abandoned(BaseException):
    """Inside a body run elsewhere: a dependency it asked for failed. A BaseException, so that a body's
    own `except Exception` does not swallow it."""


class Restart(BaseException):
    """Inside a body run elsewhere: the kernel will not keep this worker waiting (every other one waits
    already: the dependency would have nowhere to run). The body stops; it is sent again with
    the values it asked for."""

    def __init__(self, tasks: bytes):
        super().__init__("sent again with its dependencies")
        self.tasks = tasks


class _WorkerRecorder:
    """`trace.current` in a worker: rule calls are served from the values sent, else asked for
    over the channel; reads are noted."""

    def __init__(self, supplied: dict[str, Any], channel: Channel):
        self.supplied, self.channel = supplied, channel
        self.scheduler = self
        self.rules_owner = ELSEWHERE      # as the Scheduler's: rule stubs' calls are fetches here
        self.paused = 0
        self.attachment = None
        self.groups: list[list[str]] = []
        self.files: list[str] = []
        self.inputs: list[tuple[str, str]] = []    # environment variables, as the worker had them
        self.seen: set[str] = set()
        self.written: dict[str, bool] = {}      # path -> written whole (trace.Recorder.wrote_file)
        self.env_set: dict[str, Any] = {}       # variables it set: name -> value before (engine/environment.py)

    def fetch_values(self, rec: Any, tasks: list) -> list[Any]:
        missing = [t for t in tasks if t.key not in self.supplied]
        if missing:
            asked = cloudpickle.dumps([(t.rule.name, t.args, t.kwargs) for t in missing])
            answer = self.channel.ask(Need(asked))
            if isinstance(answer, SendAgain):
                raise Restart(asked)
            if not isinstance(answer, Values):
                raise Abandoned()
            self.supplied.update(cloudpickle.loads(answer.blob))
        self.groups.append([t.key for t in tasks])
        for t in tasks:
            if isinstance(self.supplied[t.key], SharedValue):      # read from the shared tier once
                self.supplied[t.key] = resolve(self.supplied[t.key])
        return [self.supplied[t.key] for t in tasks]

    def read_file(self, path: str) -> None:
        if path not in self.files:
            self.files.append(path)

    def wrote_file(self, path: str, whole: bool = True) -> None:
        self.written[path] = self.written.get(path, False) or whole

    def removed_file(self, path: str) -> None:
        """Removals are not sent back (the kernel records none for a body run elsewhere); but
        the move that follows one (os.replace, an atomic save) is a write all the same."""

    def read_input(self, key: str, digest: str) -> None:
        if key not in self.seen:
            self.seen.add(key)
            self.inputs.append((key, digest))

    def wrote_input(self, key: str, name: str | None = None, before: Any = None) -> None:
        self.seen.add(key)     # what it sets stays in the worker: the kernel's environment keeps no effect
        if name is not None:
            self.env_set.setdefault(name, before)


def run(payload: bytes, channel: Channel) -> bytes:
    global _INSTALLED
    if not _INSTALLED:
        from ..engine import environment, files
        files.install_hook()
        environment.install()
        _quiet_client_teardown()
        _INSTALLED = True
    if channel.stopped():     # stopped before it began: it does not begin
        channel.done()
        return cloudpickle.dumps(Dropped())
    fn, args, kwargs, supplied, environ, shared = cloudpickle.loads(payload)
    if environ is not None:
        _take_environment(environ)
    rec = _WorkerRecorder(supplied, channel)
    token = current.set(rec)
    try:
        value = fn(*args, **kwargs)
        if shared is not None:
            value = offer(shared, value) or value
        out: Result = Finished(value, rec.groups, rec.files, rec.attachment, rec.inputs, rec.written)
    except Abandoned:
        out = Dropped()
    except Restart as e:
        out = Need(e.tasks)
    except Exception as e:  # the rule's own error, sent back to fail its task there
        out = Raised(e, _frames(e), "".join(traceback.format_exception_only(type(e), e)))
    finally:
        current.reset(token)
    try:
        return _sendable(out)
    finally:
        channel.done()


def _quiet_client_teardown() -> None:
    """On a Dask worker, the Client that our queues and flags make there (distributed's
    `get_client()`) may be collected after the worker's event loop closed, when the worker shuts
    down; distributed then prints "Exception ignored in Client.__del__ ... IOLoop is closed" with
    a traceback to the worker's stderr, which a LocalCluster shares with the kernel (and the
    notebook shows). Nothing failed: that one message is dropped, every other one is kept."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        where = getattr(unraisable.object, "__qualname__", "")
        if where == "Client.__del__" and isinstance(unraisable.exc_value, RuntimeError) \
                and "IOLoop is closed" in str(unraisable.exc_value):
            return
        previous(unraisable)
    sys.unraisablehook = hook


def _take_environment(environ: dict[str, str]) -> None:
    """A worker process of ours starts with the environment the kernel had then: the body sees
    the kernel's as it is now (a variable set or unset since), as it would on a thread."""
    for name in [n for n in os.environ if n not in environ]:
        del os.environ[name]
    for name, value in environ.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _sendable(out: Result) -> bytes:
    try:
        return cloudpickle.dumps(out)
    except Exception as e:  # a value or an exception that does not pickle
        if isinstance(out, Raised):
            return cloudpickle.dumps(Raised(WorkerError(f"{type(out.error).__name__}: {out.error}"), out.frames, out.last))
        return cloudpickle.dumps(Raised(WorkerError(f"its value cannot be sent back: {e}"), [], ""))


def _frames(error: BaseException) -> list[tuple[str, int, str, str]]:
    """The body's frames of the traceback (not the engine's): the kernel shows them with the
    lines of its cells, which a worker does not have."""
    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # nbbuild/
    return [(f.filename, f.lineno or 0, f.name, f.line or "") for f in traceback.extract_tb(error.__traceback__)
            if not os.path.abspath(f.filename).startswith(own + os.sep)]
