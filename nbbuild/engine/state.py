"""What one build knows of one task: its status, value, hash, outcome and who waits for it.

Contract: a `TaskState` is made once per task per build (slots, no dict). `status` moves
NEW -> QUEUED (waiting for a thread) -> ACTIVE -> DONE or FAILED, and never back; `outcome` says
how it ended (executed | verified | constructed | failed | skipped | obsolete). `add_waiter`
registers a waker (a suspended greenlet, or a deferred task) that `take_waiters` hands back, once,
when the task is done: both are called under the scheduler's lock.
"""
from __future__ import annotations

import contextvars
from typing import Any

from .task import Task
from .trace import Trace

__all__ = ["TaskState", "NEW", "QUEUED", "ACTIVE", "DONE", "FAILED"]

NEW, QUEUED, ACTIVE, DONE, FAILED = range(5)


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
