"""A record of which rule bodies ran, kept outside what the notebook computes.

Tests count runs by appending to `calls`. As an ordinary list, `calls` would be a value like any
other: read by value, and changed in place by every body that appends to it, so each append
would be a new version of `calls` (what plain execution gives). A `Calls` pickles as an empty one,
whatever it holds: reading it, or appending to it, is never an input or a change.
"""
from __future__ import annotations


class Calls(list):
    def __reduce__(self) -> tuple:
        return Calls, ()
