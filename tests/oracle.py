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


def plainly(cells: list[str], names: tuple[str, ...]) -> dict[str, Any]:
    """The values of `names` after running the cells, in order, as plain Python: what a notebook
    of the same cells gives without nbbuild."""
    import copy
    namespace: dict[str, Any] = {}
    for n, cell in enumerate(cells):
        exec(compile(cell, f"<cell {n + 1}>", "exec"), namespace)
    return {name: copy.deepcopy(namespace[name]) for name in names}
