"""The correctness oracle shared by every rebuild test: a target's value computed from scratch.

No store, no trace, no scheduler: the rule's function runs as plain Python, and every rule it calls
is evaluated the same way, recursively. A build is correct when each target equals this.
"""
from __future__ import annotations

from typing import Any
from unittest import mock

from nbbuild import Rule, Task


def _plain_call(rule: Rule, *args: Any, **kwargs: Any) -> Any:
    return rule.fn(*args, **kwargs)


def from_scratch(task: Task) -> Any:
    with mock.patch.object(Rule, "__call__", _plain_call):
        return task.rule.fn(*task.args, **task.kwargs)
