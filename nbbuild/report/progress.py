"""A build as its views see it while it runs: snapshots of progress, taken from any thread.

Contract:
- `Tracker(scheduler, targets, expected)` follows one build. `snapshot()` may be called from any
  thread at any time (views call it from a ticker thread a few times a second); it reads only what
  finished since the previous call, so its cost does not grow with the build, and it never touches
  the store or a value.
- A `Progress` is a frozen record: how many tasks are `known` (the most of: tasks the build has
  met so far, tasks the last build of the same targets checked, tasks their stored traces reach),
  how many were `checked` (finished: ran, reused, failed or skipped), the tasks `running` now with
  their elapsed time (longest first), and `rows` of finished tasks: every one, in finishing order,
  while there are at most `ROW_LIMIT`; beyond that only the `SLOWEST` slowest (`complete` is then
  False), so a 10,000-task build is shown in a few dozen rows.
- `finish(report, error)` settles the tracker: the last snapshot has `done` set, the report's line
  as `summary` (when the build got as far as a report: failed builds do) and, when it raised,
  why in `error` ("interrupted" for an interrupt).
- `Watched`, a part of Build (mixed in): `progress()`, the running build's snapshot, read from any
  thread (the listeners that show builds, listeners.py, call it from their ticker threads), and
  what a view keeps across sessions: `keep_view_state(name, value)` writes a JSON value to the
  store under `name` (None removes it; a store that cannot be written is the store's to report),
  `view_state(name)` reads it back in a later session, None when there is none or it cannot be read.
"""
from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..engine.state import Outcome

if TYPE_CHECKING:
    from ..engine.scheduler import Scheduler
    from ..store.store import Store
    from ..engine.task import Task
    from .report import BuildReport

__all__ = ["Progress", "TaskRow", "Tracker", "Watched", "ROW_LIMIT", "SLOWEST"]

log = logging.getLogger("nbbuild")

ROW_LIMIT = 200
SLOWEST = 12


@dataclass(frozen=True)
class TaskRow:
    key: str
    task: str
    outcome: Outcome    # running | executed | verified | constructed | failed | skipped
    seconds: float      # run time; for reused tasks the recorded run time they saved; running: so far


@dataclass(frozen=True)
class Progress:
    targets: tuple[str, ...]
    known: int
    checked: int
    ran: int
    reused: int
    failed: int
    skipped: int
    elapsed: float
    running: tuple[TaskRow, ...]
    rows: tuple[TaskRow, ...]
    complete: bool          # rows lists every finished task (else only the slowest)
    done: bool = False
    summary: str = ""       # the report's one line, once done
    error: str = ""         # why the build stopped, when it raised

    @property
    def fraction(self) -> float:
        return 1.0 if self.done else self.checked / self.known if self.known else 0.0


class Tracker:
    def __init__(self, scheduler: Scheduler, targets: Sequence[Task], expected: int = 0):
        self.sched: Scheduler | None = scheduler     # None once settled (finish)
        self.targets = tuple(repr(t) for t in targets)
        self.target_keys = tuple(t.key for t in targets)
        self.start = time.perf_counter()
        self.expected = expected
        self._lock = threading.Lock()
        self._seen = 0
        self._n = 0
        self._counts = {o: 0 for o in (Outcome.EXECUTED, Outcome.VERIFIED, Outcome.CONSTRUCTED, Outcome.FAILED,
                                       Outcome.SKIPPED)}
        self._rows: list[TaskRow] | None = []
        self._slowest: list[tuple[float, int, TaskRow]] = []     # a min-heap of the slowest rows
        self._reach: int | None = None
        self._final: Progress | None = None

    def _reached(self) -> int:
        """How many tasks the targets' newest stored traces reach (computed once, off the build's
        threads: the views ask)."""
        if self._reach is None:
            assert self.sched is not None       # asked only before it settled
            traces, seen, todo = self.sched.traces, set(), list(self.target_keys)
            while todo:
                key = todo.pop()
                if key in seen:
                    continue
                seen.add(key)
                found = traces.get(key)
                if found:
                    todo.extend(k for k in found[0].split()[0] if k not in seen)
            self._reach = len(seen)
        return self._reach

    def _take_finished(self) -> None:
        assert self.sched is not None       # called only before it settled
        order = self.sched.order
        end = len(order)       # the scheduler only appends: what is below `end` is settled
        counts, rows, slowest = self._counts, self._rows, self._slowest
        for i in range(self._seen, end):
            st = order[i]
            outcome = st.outcome or Outcome.FAILED
            if outcome == Outcome.OBSOLETE:
                continue
            counts[outcome] += 1
            if rows is not None:
                rows.append(TaskRow(st.task.key, st.task._repr, outcome, st.seconds))
                if len(rows) > ROW_LIMIT:
                    for r in rows:
                        self._keep_slow(r.seconds, r)
                    rows = self._rows = None
            elif len(slowest) < SLOWEST or st.seconds > slowest[0][0]:
                # beyond ROW_LIMIT most tasks are never shown: a row is made only for the slowest
                self._keep_slow(st.seconds, TaskRow(st.task.key, st.task._repr, outcome, st.seconds))
        self._seen = end

    def _keep_slow(self, seconds: float, row: TaskRow) -> None:
        self._n += 1
        item = (seconds, self._n, row)
        if len(self._slowest) < SLOWEST:
            heapq.heappush(self._slowest, item)
        elif seconds > self._slowest[0][0]:
            heapq.heapreplace(self._slowest, item)

    def snapshot(self) -> Progress:
        with self._lock:
            if self._final is not None:
                return self._final
            return self._snapshot()

    def _snapshot(self, done: bool = False, summary: str = "", error: str = "", total: int = 0) -> Progress:
        self._take_finished()
        sched = self.sched
        assert sched is not None
        now = time.perf_counter()
        running = sorted((TaskRow(st.task.key, st.task._repr, Outcome.RUNNING, now - started)
                          for st, started in sched.running.copy().values()),
                         key=lambda r: -r.seconds)
        c = self._counts
        checked = sum(c.values())
        if self._rows is not None:
            rows, complete = tuple(self._rows), True
        else:
            rows, complete = tuple(r for _, _, r in sorted(self._slowest, key=lambda x: -x[0])), False
        known = max(checked + len(running), len(sched.states), self.expected, total)
        if not done:
            known = max(known, self._reached())
        return Progress(self.targets, known if not done else max(total, checked), max(checked, total),
                        c[Outcome.EXECUTED], c[Outcome.VERIFIED] + c[Outcome.CONSTRUCTED] + max(0, total - checked),
                        c[Outcome.FAILED], c[Outcome.SKIPPED], now - self.start, tuple(running) if not done else (),
                        rows, complete, done, summary, error)

    def finish(self, report: BuildReport | None = None, error: BaseException | None = None) -> Progress:
        """Settle: later snapshots are this one. `report` (the build's) counts the tasks known up to
        date without being visited as reused."""
        with self._lock:
            if self._final is None:
                total = len(report.rows[0]) if report is not None else 0
                why = ("" if error is None else "interrupted" if isinstance(error, KeyboardInterrupt)
                       else f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
                self._final = self._snapshot(True, str(report) if report is not None else "", why, total)
                self.sched = None      # it holds every task's value: the settled snapshot is all that stays
            return self._final


_VIEW = "view:"      # the store's settings a view keeps: apart from the store's own (quota)


class Watched:
    """A part of Build (mixed in): `progress()`, the snapshot its listeners (listeners.py) read, and
    what views keep across sessions (`view_state`, `keep_view_state`)."""
    _tracker: Tracker | None
    store: Store

    def view_state(self, name: str) -> Any:
        """What a view kept under `name` (keep_view_state), maybe in an earlier session; None if nothing."""
        text = self.store.setting(_VIEW + name)
        try:
            return json.loads(text) if isinstance(text, str) else None
        except ValueError:  # a record written by something else: as if there were none
            log.debug("nbbuild: the view state %r could not be read", name, exc_info=True)
            return None

    def keep_view_state(self, name: str, value: Any) -> None:
        """Keep a JSON value for the sessions that follow (None: forget it)."""
        self.store.set_setting(_VIEW + name, None if value is None else json.dumps(value))

    def progress(self) -> Progress | None:
        """A snapshot of the running build, or the settled one of the last build (None before any)."""
        tracker = self._tracker
        return tracker.snapshot() if tracker is not None else None
