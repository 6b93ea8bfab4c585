"""What one build knows of one task: its status, value, hash, outcome and who waits for it.

Contract: a `TaskState` is made once per task per build (slots, no dict). `status` (a `Status`,
ordered) moves NEW -> QUEUED (waiting for a thread) -> ACTIVE -> DONE or FAILED, and never back;
`outcome` (an `Outcome`, None until it ends) says how it ended: executed | verified | constructed
| failed | skipped | obsolete. An Outcome is a `Word`: a str-valued enum whose members are their
values wherever a str goes (compared, hashed, formatted, JSON), so reports, progress rows and
widgets show and send the same text as before. `add_waiter`
registers a waker (a suspended greenlet, or a deferred task) that `take_waiters` hands back, once,
when the task is done: both are called under the scheduler's lock.
"""
from __future__ import annotations

import contextvars
import enum
from typing import TYPE_CHECKING, Any

from .task import Task
from .trace import Trace

if TYPE_CHECKING:
    from ..executors.hubs import Waker

__all__ = ["TaskState", "Status", "Outcome", "Word", "NEW", "QUEUED", "ACTIVE", "DONE", "FAILED"]


class Status(enum.IntEnum):
    """Where a task is in one build; ordered (`status >= DONE`: it ended)."""
    NEW = 0
    QUEUED = 1      # waiting for a thread
    ACTIVE = 2
    DONE = 3
    FAILED = 4


# as names of their own: the scheduler's hot paths read them
NEW, QUEUED, ACTIVE, DONE, FAILED = Status.NEW, Status.QUEUED, Status.ACTIVE, Status.DONE, Status.FAILED


class Word(str, enum.Enum):
    """A str-valued enum whose members are their values as text too: str(), f-strings and %s
    give the value (a plain (str, Enum) gives "Class.NAME" there); ==, hash and JSON already do."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


class Outcome(Word):
    """How a task ended in a build (TaskState.outcome), and the words reports and views use."""
    EXECUTED = "executed"       # its body ran
    VERIFIED = "verified"       # its newest trace matched: its stored value is reused
    CONSTRUCTED = "constructed"  # an older trace matched: that run's value is reused
    FAILED = "failed"           # its body raised
    SKIPPED = "skipped"         # a dependency failed
    OBSOLETE = "obsolete"       # read back from a trace whose arguments the rule no longer takes
    RUNNING = "running"         # not an end: a progress row of a body running now (report/progress.py)


REUSED = frozenset({Outcome.VERIFIED, Outcome.CONSTRUCTED})
UNFINISHED = frozenset({Outcome.FAILED, Outcome.SKIPPED, Outcome.OBSOLETE})   # the task has no value


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
        self.waiters: list[Waker | TaskState] | None = None
        self.blocked_on: TaskState | None = None
        self.outcome: Outcome | None = None
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

    def add_waiter(self, waker: Waker | TaskState) -> None:
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waker)

    def take_waiters(self) -> list[Waker | TaskState]:
        w = self.waiters
        self.waiters = None
        return w or []
