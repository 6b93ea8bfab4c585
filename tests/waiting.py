"""Waiting in tests: for a condition, with a deadline, never for a length of time.

`wait_until(condition)` returns as soon as `condition()` is true and fails the test, saying what
it waited for, if that takes longer than the deadline. The deadline is generous on purpose: it
only bounds a test that would otherwise hang, and a busy machine must not make it fail. The
interval between looks is how often the condition is asked, not something the test depends on.
"""
from __future__ import annotations

import time
from typing import Callable

DEADLINE = 60.0


def wait_until(condition: Callable[[], object], what: str = "the condition", timeout: float = DEADLINE,
               interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(interval)
