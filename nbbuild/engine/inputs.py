"""Dependencies that are neither tasks nor files: what each kind of input is now, and how it is
said to have changed.

Contract: `digest(key, owner=None)` gives the hash an input key (`trace.INPUT_PREFIX`...) has now
for the task `owner` (a variable it set itself counts at its value before: environment.py):
environment variables (environment.py: `ENV_PREFIX`, `ENV_ALL`) and the global random generators
(randomness.py: `RNG_PREFIX`); a key of no known kind matches no recorded hash. `describe(key)`
says in words that it changed ("environment variable HOME changed"). `for_targets_only(key)`: an
input checked only when its task is a build's target, not when another task reads its value (the
global random generators: a cell that drew is not run again because a later cell drew too).
"""
from __future__ import annotations

from . import environment, randomness

__all__ = ["digest", "describe", "for_targets_only"]


def digest(key: str, owner: environment.Owner | None = None) -> str:
    if key.startswith(randomness.RNG_PREFIX):
        return randomness.digest(key)
    return environment.digest(key, owner)


def describe(key: str) -> str:
    if key.startswith(randomness.RNG_PREFIX):
        return randomness.describe(key)
    return environment.describe(key)


def for_targets_only(key: str) -> bool:
    return key.startswith(randomness.RNG_PREFIX)
