"""Dependencies that are neither tasks nor files: what each kind of input is now, and how it is
said to have changed.

Contract: `digest(key)` gives the hash an input key (`trace.INPUT_PREFIX`...) has now:
environment variables (environment.py: `ENV_PREFIX`, `ENV_ALL`) and the global random generators
(randomness.py: `RNG_PREFIX`); a key of no known kind matches no recorded hash. `describe(key)`
says in words that it changed ("environment variable HOME changed").
"""
from __future__ import annotations

from . import environment, randomness

__all__ = ["digest", "describe"]


def digest(key: str) -> str:
    if key.startswith(randomness.RNG_PREFIX):
        return randomness.digest(key)
    return environment.digest(key)


def describe(key: str) -> str:
    if key.startswith(randomness.RNG_PREFIX):
        return randomness.describe(key)
    return environment.describe(key)
