"""Tasks: a rule applied to arguments, the unit a build brings up to date.

Contract: a `Task` is hashable and equal by `key` (`name/digest-of-canonical-arguments`, made by
`Rule.task`: engine/rule.py, from engine/arguments.py's text); `repr(task)` reads like the call:
`count('a.txt')`. A task read back from a trace (`Rule.task_from_encoded`) decodes its arguments
only when they are asked for (verifying it needs only its key). `run()` calls the rule's function.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from .arguments import decode_args

if TYPE_CHECKING:
    from .rule import Rule

__all__ = ["Task"]


class Task:
    """A rule applied to arguments. Equal (and hashed) by key. A task read back from a trace
    decodes its arguments only when it runs (verifying needs only the key)."""

    __slots__ = ("rule", "_args", "_kwargs", "key", "encoded", "_repr")

    def __init__(self, rule: Rule, args: tuple | None, kwargs: dict | None, key: str, encoded: str, text: str):
        self.rule = rule
        self._args = args
        self._kwargs = kwargs
        self.key = key
        self.encoded = encoded
        self._repr = text

    @property
    def args(self) -> tuple:
        if self._args is None:
            pos, kw = decode_args(self.encoded)
            self._args, self._kwargs = tuple(pos), dict(kw)
        return self._args

    @property
    def kwargs(self) -> dict:
        if self._kwargs is None:
            self.args  # noqa: B018 - decodes both
        return cast(dict, self._kwargs)

    def __repr__(self) -> str:
        return self._repr

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.key == self.key

    def run(self) -> Any:
        return self.rule.fn(*self.args, **self.kwargs)
