"""Which ready task starts first: critical path first, from the durations traces recorded (as
BuildGrid assigns by priority and Bazel by critical path).

Contract:
- `CriticalPath(traces)`: `below(key)` is the longest recorded chain of run times from the task
  down through what its newest trace fetched (itself included), computed once per key and build,
  without recursion (deep chains are fine). `seconds(key)` is its own recorded run time. A task
  that never ran is estimated at the mean recorded time of the tasks of its rule seen so far in
  the build (keys are "rule/hash"; 0 when none was seen).
- `above(key)` (after `targets` is set): the longest recorded chain of run times above the task,
  from the build's targets down to it (itself excluded) through the newest traces, the static
  level of list scheduling (HLFET); 0 for what the traces do not reach. Computed once, for every
  task the traces reach, on the first call.
- A task's priority is `up + below(key)`: `up` is the recorded time of the chain above it, from
  the target down to the task that asked for it (that task, and those above it, wait for it), so
  the priority is the longest recorded path through the task. A task whose dependencies are done
  (scheduler.py: deferred until they are) has only `max(up, above(key)) + seconds(key)` left.
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Mapping
    from .state import TaskState
    from .trace import Trace

__all__ = ["CriticalPath", "ReadyQueue"]


class CriticalPath:
    def __init__(self, traces: Mapping[str, list[Trace]]):
        self.traces = traces
        self.targets: frozenset[str] = frozenset()
        self._below: dict[str, float] = {}
        self._above: dict[str, float] | None = None
        self._rules: dict[str, list[float]] = {}      # rule name -> [sum of seconds, count] seen

    def seconds(self, key: str) -> float:
        found = self.traces.get(key)
        return self._seen(key, found[0].seconds) if found else self.estimate(key)

    def _seen(self, key: str, seconds: float) -> float:
        rule = key.rpartition("/")[0]
        stats = self._rules.get(rule)
        if stats is not None:
            stats[0] += seconds
            stats[1] += 1
        elif rule:
            self._rules[rule] = [seconds, 1]
        return seconds

    def estimate(self, key: str) -> float:
        """A task that never ran: the mean time of its rule's tasks seen so far."""
        stats = self._rules.get(key.rpartition("/")[0])
        return stats[0] / stats[1] if stats else 0.0

    def above(self, key: str) -> float:
        if self._above is None:
            self._above = self._levels()
        return self._above.get(key, 0.0)

    def _levels(self) -> dict[str, float]:
        # depth-first from the targets, without recursion; reversed post-order is topological
        # (askers before what they asked for), so one relaxation pass gives the longest chains
        post: list[str] = []
        seen = set(self.targets)
        stack = [(k, False) for k in self.targets]
        while stack:
            k, expanded = stack.pop()
            if expanded:
                post.append(k)
                continue
            stack.append((k, True))
            found = self.traces.get(k)
            for d in (found[0].split()[0] if found else ()):
                if d not in seen:              # a cycle in old traces is cut where it closes
                    seen.add(d)
                    stack.append((d, False))
        level = dict.fromkeys(self.targets, 0.0)
        for k in reversed(post):
            found = self.traces.get(k)
            if not found:
                continue
            mine = level.get(k, 0.0) + found[0].seconds
            for d in found[0].split()[0]:
                if level.get(d, -1.0) < mine:
                    level[d] = mine
        return level

    def below(self, key: str) -> float:
        done = self._below
        value = done.get(key)
        if value is not None:
            return value
        found = self.traces.get(key)
        if not found:
            done[key] = value = self.estimate(key)
            return value
        trace = found[0]
        if not trace.deps or not trace.split()[0]:     # most tasks of a big build: no walk needed
            done[key] = self._seen(key, trace.seconds)
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
                own = self._seen(k, found[0].seconds) if found else self.estimate(k)
                done[k] = own + max((done.get(d, 0.0) for d in deps), default=0.0)
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
        self._fifo: deque[TaskState] = deque()
        self._heap: list[tuple[float, int, TaskState]] = []
        self._order = itertools.count()

    def push(self, state: TaskState, priority: float = 0.0) -> None:
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
