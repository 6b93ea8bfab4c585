"""The messages between the kernel and a body run elsewhere (executors/kernel.py and worker.py),
and what `worker.run` sends back.

Contract:
- Over a job's queues (executors/protocol.py: `Channel.ask`, `Job.next`, `Job.answer`): the body
  sends `Need` (the tasks it asks for) and, once it ended however, `Done`; the kernel answers a
  Need with `Values` (their values), `SendAgain` (it will not keep this worker waiting: the body
  stops and is sent again with what it asked for) or `GiveUp` (a dependency failed: it stops).
- What `worker.run` returns (cloudpickled): `Finished` (the value and what the body fetched,
  read, attached and wrote), `Raised` (its exception, its frames outside nbbuild, its last
  line), `Dropped` (a dependency failed, or it was stopped before it began), or `Need` (it was
  told to stop and be sent again with these tasks).
- `wire(message)` and `unwire(data)` are a queue message's form on the queues: the tagged tuple
  of old (("need", tasks), ("done",), ("values", blob), ("restart",), ("failed",)), since a Dask
  queue carries msgpack only (it gives a tuple back as a list).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

__all__ = ["Need", "Done", "Values", "SendAgain", "GiveUp", "Finished", "Raised", "Dropped", "Message",
           "Result", "wire", "unwire"]


@dataclass(frozen=True)
class Need:
    """The tasks a body asks for: cloudpickle of [(rule name, args, kwargs)]."""
    asked: bytes


@dataclass(frozen=True)
class Done:
    """The body ended (returned, raised or was stopped)."""


@dataclass(frozen=True)
class Values:
    """The answer to a Need: cloudpickle of {task key: value}."""
    blob: bytes


@dataclass(frozen=True)
class SendAgain:
    """The answer to a Need when no worker may wait: stop, to be sent again with those tasks."""


@dataclass(frozen=True)
class GiveUp:
    """The answer to a Need when a dependency failed: stop."""


@dataclass(frozen=True)
class Finished:
    value: Any
    groups: list[list[str]]                 # task keys of each fetch, in order
    files: list[str]                        # files read
    attachment: Any                         # what it attached (trace.attach)
    inputs: list[tuple[str, str]]           # environment variables read, with their hashes there
    written: dict[str, bool]                # files written -> written whole


@dataclass(frozen=True)
class Raised:
    error: BaseException
    frames: list[tuple[str, int, str, str]]     # (file, line number, function, line) outside nbbuild
    last: str                                   # the exception's own line(s)


@dataclass(frozen=True)
class Dropped:
    """A dependency failed, or the body was stopped before it began."""


Message = Union[Need, Done, Values, SendAgain, GiveUp]
Result = Union[Finished, Raised, Dropped, Need]

_TAGS: dict[type, str] = {Need: "need", Done: "done", Values: "values", SendAgain: "restart", GiveUp: "failed"}
_BARE: dict[str, type[Done | SendAgain | GiveUp]] = {"done": Done, "restart": SendAgain, "failed": GiveUp}


def wire(message: Message) -> tuple:
    if isinstance(message, Need):
        return ("need", message.asked)
    if isinstance(message, Values):
        return ("values", message.blob)
    return (_TAGS[type(message)],)


def unwire(data: Sequence[Any]) -> Message:
    tag = data[0]
    if tag == "need":
        return Need(data[1])
    if tag == "values":
        return Values(data[1])
    return _BARE[tag]()
