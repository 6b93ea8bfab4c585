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
  `push(state, priority)`, `pop()` (None when empty), `len()`. Priorities count to the
  millisecond: closer ones keep the order they were queued in.
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

    def below(self, key: str) -> float:
        done = self._below
        value = done.get(key)
        if value is not None:
            return value
        found = self.traces.get(key)
        if not found:
            done[key] = 0.0
            return 0.0
        trace = found[0]
        if not trace.deps or not trace.split()[0]:     # most tasks of a big build: no walk needed
            done[key] = trace.seconds
            return trace.seconds
        # post-order walk: a task's value once all of its dependencies have theirs
        stack: list[tuple[str, bool]] = [(key, False)]
        seen = {key}
        while stack:
            k, expanded = stack.pop()
            if k in done:
                continue
            found = self.traces.get(k)
            deps = found[0].split()[0] if found else ()
            if expanded:
                done[k] = (found[0].seconds if found else 0.0) + max((done.get(d, 0.0) for d in deps), default=0.0)
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
            # to the millisecond: tasks of microseconds (a no-op build) keep their order of asking
            heapq.heappush(self._heap, (-round(priority, 3), next(self._order), state))

    def pop(self) -> Any:
        if self.paths is None:
            return self._fifo.popleft() if self._fifo else None
        return heapq.heappop(self._heap)[2] if self._heap else None

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap)
