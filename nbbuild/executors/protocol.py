"""What the kernel's side of a body run elsewhere (executors/kernel.py) asks of an executor, of
the job it starts, and what a body in a worker asks of its channel (executors/worker.py).

Contract:
- An `Executor` (pools.py: ProcessExecutor, DaskExecutor; `kind` "processes" or "dask")
  `start`s `worker.run(payload, channel)` in a worker and returns a `Job`. `hold()` says whether
  one more body may wait for the kernel (one process always stays free for what they wait for,
  so nothing deadlocks), `release()` ends such a wait; `close()` shuts the executor down (a Dask
  cluster only when it made it).
- A `Job`: `next()` blocks for the body's next message (a `Need`, or `Done` once it ended,
  however: executors/messages.py); `answer(message)` replies to a Need; `result()` is what
  `worker.run` returned (a timeout says so in one line); `stop()` stops the body wherever it is.
- A `Channel`, the body's side (pickled to it with the payload): `ask(need)` sends a Need and
  blocks for the answer, `done()` says the body ended, `stopped()` whether the kernel stopped it
  before it began.
"""
from __future__ import annotations

from typing import Protocol

from .messages import Message, Need

__all__ = ["Executor", "Job", "Channel"]


class Job(Protocol):
    def next(self) -> Message: ...

    def answer(self, message: Message) -> None: ...

    def result(self) -> bytes: ...

    def stop(self) -> None: ...


class Executor(Protocol):
    @property
    def kind(self) -> str: ...

    def start(self, payload: bytes, timeout: float | None, name: str) -> Job: ...

    def hold(self) -> bool: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class Channel(Protocol):
    def ask(self, message: Need) -> Message: ...

    def done(self) -> None: ...

    def stopped(self) -> bool: ...
