"""Which ready task starts first: critical path first, from the durations traces recorded (as
BuildGrid assigns by priority and Bazel by critical path).

Contract:
- `CriticalPath(traces)`: `below(key)` is the longest recorded chain of run times from the task
  down through what its newest trace fetched (itself included; 0 for what never ran), computed
  once per key and build, without recursion (deep chains are fine). `seconds(key)` is its own
  recorded run time.
- A task's priority is `up + below(key)`: `up` is the recorded time of the chain above it, from
  the target down to the task that asked for it (that task, and those above it, wait for it), so
  the priority is the longest recorded path through the task. Tasks never run count 0.
- `ReadyQueue(paths)`: the scheduler's queue of tasks offered to idle threads. With `paths` it
  pops the highest priority first (ties: first queued first); without, first in first out.
  `push(state, priority)`, `pop()` (None when empty), `len()`.
Nothing here touches the store: `traces` is the build's trace index (key -> traces, newest first).
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Any

__all__ = ["CriticalPath", "ReadyQueue"]


class CriticalPath:
    def __init__(self, traces: Any):
        self.traces = traces
        self._below: dict[str, float] = {}

    def seconds(self, key: str) -> float:
        found = self.traces.get(key)
        return found[0].seconds if found else 0.0

    def _deps(self, key: str) -> tuple[str, ...]:
        found = self.traces.get(key)
        return found[0].split()[0] if found else ()

    def below(self, key: str) -> float:
        done = self._below
        if key in done:
            return done[key]
        # post-order walk: a task's value once all of its dependencies have theirs
        stack: list[tuple[str, bool]] = [(key, False)]
        seen = {key}
        while stack:
            k, expanded = stack.pop()
            if k in done:
                continue
            deps = self._deps(k)
            if expanded:
                done[k] = self.seconds(k) + max((done.get(d, 0.0) for d in deps), default=0.0)
                continue
            stack.append((k, True))
            for d in deps:
                if d not in done and d not in seen:       # a cycle in old traces must not loop
                    seen.add(d)
                    stack.append((d, False))
        return done[key]


class ReadyQueue:
    def __init__(self, paths: CriticalPath | None):
        self.paths = paths
        self._fifo: deque[Any] = deque()
        self._heap: list[tuple[float, int, Any]] = []
        self._order = itertools.count()

    def push(self, state: Any, priority: float = 0.0) -> None:
        if self.paths is None:
            self._fifo.append(state)
        else:
            heapq.heappush(self._heap, (-priority, next(self._order), state))

    def pop(self) -> Any:
        if self.paths is None:
            return self._fifo.popleft() if self._fifo else None
        return heapq.heappop(self._heap)[2] if self._heap else None

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap)
