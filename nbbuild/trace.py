"""Traces: what one run of a task read, and how a stored trace is matched again.

Contract:
- A `Trace` is immutable: the task (key, rule name, encoded arguments, repr), the rule version and
  the parts it was made of, the dependencies in the order they were fetched (grouped: one group per
  fetch call; members of a group were asked for together), each with the value hash it had, the
  result's value hash, and how long the run took.
- `record`: a `Recorder` collects a running task's dependencies; `Recorder.trace()` freezes them.
- `verify`/`construct`: `match(traces, version, fetch_group)` walks the traces newest first and each
  trace's groups in order, asking `fetch_group` for the current hashes of one group at a time, and
  stops a trace at its first mismatch: so it only ever fetches what running the rule would fetch.
  The first trace that matches gives the result hash: the newest one is a verifying trace, an older
  one a constructive trace (an edit was reverted).
- The current recorder of the running rule body is `current` (a ContextVar: per thread and per
  greenlet). Engine work sets `paused` so that nothing it opens is taken for an input.
"""
from __future__ import annotations

import contextvars
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .hashing import hash_bytes

__all__ = ["Trace", "Recorder", "current", "match", "FILE_PREFIX", "MISSING"]

FILE_PREFIX = "@file:"
MISSING = "-"          # the "hash" of a dependency that cannot be had (unknown rule, missing file)

Group = tuple[tuple[str, str], ...]
_JSON = json.JSONEncoder(separators=(",", ":"))   # one encoder: json.dumps builds one per call


@dataclass(frozen=True)
class Trace:
    key: str
    rule: str
    args: str
    repr: str
    version: str
    deps: tuple[Group, ...]
    result: str
    seconds: float
    parts: tuple[tuple[str, str], ...] = ()
    packages: tuple[tuple[str, str], ...] = ()
    created: float = field(default_factory=time.time, compare=False)

    def _cached(self, name: str, make: Callable[[], str]) -> str:
        # a frozen dataclass still has a __dict__: derived text is computed once, lazily (loading
        # thousands of traces must not pay for it)
        value = self.__dict__.get(name)
        if value is None:
            value = self.__dict__[name] = make()
        return value

    @property
    def _deps_json(self) -> str:
        return self._cached("_deps", lambda: _JSON.encode(self.deps))

    @property
    def ident(self) -> str:
        """Identity of what the trace says (not when): equal traces share it."""
        return self._cached("_ident", lambda: hash_bytes(
            self.version.encode(), self.result.encode(), self._deps_json.encode())[:16])

    def encode(self) -> bytes:
        head = _JSON.encode({
            "k": self.key, "r": self.rule, "a": self.args, "s": self.repr, "v": self.version,
            "h": self.result, "t": self.seconds, "p": self.parts, "pk": self.packages, "c": self.created,
        })
        return (head[:-1] + ',"d":' + self._deps_json + "}").encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Trace:
        d = json.loads(data)
        return cls(d["k"], d["r"], d["a"], d["s"], d["v"],
                   tuple(tuple((k, h) for k, h in g) for g in d["d"]),
                   d["h"], d["t"], tuple(map(tuple, d["p"])), tuple(map(tuple, d["pk"])), d["c"])

    def dep_keys(self) -> Iterable[str]:
        for group in self.deps:
            for k, _ in group:
                yield k


class Recorder:
    """Collects what one run of a task fetches and reads."""

    __slots__ = ("state", "scheduler", "groups", "files", "written", "paused", "failed_dep", "waited")

    def __init__(self, state: Any, scheduler: Any):
        self.state = state
        self.scheduler = scheduler
        self.groups: list[Group] = []
        self.files: set[str] = set()
        self.written: set[str] = set()
        self.paused = 0
        self.failed_dep: Any = None
        self.waited = 0.0      # seconds spent fetching dependencies: not the task's own time

    def add_group(self, group: Group) -> None:
        self.groups.append(group)

    def read_file(self, path: str) -> None:
        if path in self.files or path in self.written:
            return
        self.files.add(path)
        self.paused += 1
        try:
            h = self.scheduler.file_hash(path)
        finally:
            self.paused -= 1
        self.groups.append(((FILE_PREFIX + path, h),))

    def wrote_file(self, path: str) -> None:
        self.written.add(path)

    def dependencies(self) -> tuple[Group, ...]:
        if not self.written:
            return tuple(self.groups)
        drop = {FILE_PREFIX + p for p in self.written}
        kept = (tuple(d for d in g if d[0] not in drop) for g in self.groups)
        return tuple(g for g in kept if g)


current: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("nbbuild_recorder", default=None)


def match(traces: Sequence[Trace], version: str, state: Any, known: dict[str, str],
          group_matches: Callable[[Any, Group], bool]) -> tuple[Trace | None, int]:
    """The first trace (newest first) of this version whose dependencies still have the recorded
    hashes, and its position (0: verifying trace; more: constructive trace).

    `known` maps the keys of tasks already brought up to date in this build to their hashes (the
    cheap common case); `group_matches(state, group)` fetches one group and says whether its
    hashes are unchanged."""
    for i, trace in enumerate(traces):
        if trace.version != version:
            continue
        for group in trace.deps:
            if len(group) == 1:
                key, recorded = group[0]
                h = known.get(key)
                if h is not None:
                    if h != recorded:
                        break
                    continue
            if not group_matches(state, group):
                break
        else:
            return trace, i
    return None, -1
