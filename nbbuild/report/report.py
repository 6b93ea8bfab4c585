"""What one build did: the BuildReport record, made from the scheduler's task states.

Contract:
- `BuildReport` lists task reprs by outcome (`executed`, `reused` and of them `constructed`,
  `failed`, `skipped`, `unstored`), the build's `seconds` and the `saved_seconds` its reuse saved;
  `tasks` gives one `TaskReport` per task checked, in finishing order.
- `make_report(scheduler, untouched, seconds)` makes it once the build is over and counts the
  store's hits and misses (reuse of stored values, policy "persist").
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from ..engine.state import REUSED, Outcome

if TYPE_CHECKING:
    from ..engine.scheduler import Scheduler

__all__ = ["BuildReport", "TaskReport", "make_report"]


class TaskReport(NamedTuple):
    task: str
    outcome: Outcome      # executed | verified | constructed | failed | skipped
    seconds: float        # run time, or for reused tasks the run time they saved
    unstored: str = ""


@dataclass(frozen=True)
class BuildReport:
    """One build, described with task reprs: `executed` ran, `reused` were up to date (of them,
    `constructed` came from an older trace: an edit was reverted), `failed` raised, `skipped` were
    not built because a dependency failed, `unstored` ran but their values could not be stored.
    `saved_seconds` adds up the recorded run times of the reused tasks. `attempts` gives the tasks
    whose body ran more than once (retries) and how often; `overdue` those that ran past their
    timeout on a thread (where a body cannot be stopped); `restored` the reused tasks whose files
    (engine/outputs.py) were missing or changed and were written back from the store, with their paths."""

    executed: list[str]
    reused: list[str]
    failed: list[str]
    skipped: list[str]
    unstored: list[str]
    constructed: list[str]
    seconds: float
    saved_seconds: float
    rows: tuple = field(default=((), (), (), {}), repr=False, compare=False)
    attempts: dict = field(default_factory=dict)
    overdue: list = field(default_factory=list)
    restored: dict = field(default_factory=dict)

    @functools.cached_property
    def tasks(self) -> tuple[TaskReport, ...]:
        """Every task the build checked, in the order they finished."""
        texts, outcomes, durations, notes = self.rows
        return tuple(TaskReport(t, o, s, notes.get(t, "")) for t, o, s in zip(texts, outcomes, durations))

    def __str__(self) -> str:
        s = (f"ran {len(self.executed)}, reused {len(self.reused)}, failed {len(self.failed)}"
             f" in {self.seconds:.2f} s (saved {self.saved_seconds:.2f} s)")
        if self.unstored:
            s += f"; not stored: {', '.join(self.unstored)}"
        return s


def make_report(sched: Scheduler, untouched: list[tuple[str, float, str]], seconds: float) -> BuildReport:
    """`untouched`: tasks known up to date from earlier builds of this process, never visited."""
    E, V, C, F, S = Outcome.EXECUTED, Outcome.VERIFIED, Outcome.CONSTRUCTED, Outcome.FAILED, Outcome.SKIPPED
    lists: dict[Outcome, list[str]] = {k: [] for k in (E, V, C, F, S)}
    # per-task data kept as strings and floats (untracked by the garbage collector); TaskReport
    # records are made only when `tasks` is read
    texts: list[str] = []
    outcomes: list[Outcome] = []
    durations: list[float] = []
    notes: dict[str, str] = {}
    unstored, saved, hits, misses = [], 0.0, 0, 0
    rows = [(t, s, p, V, "") for t, s, p in untouched]
    rows += [(st.task._repr, st.seconds, st.task.rule.policy, st.outcome or F, st.unstored)
             for st in sched.order if st.outcome != Outcome.OBSOLETE]
    for text, secs, policy, outcome, note in rows:
        lists[outcome].append(text)
        texts.append(text)
        outcomes.append(outcome)
        durations.append(secs)
        if outcome in REUSED:
            saved += secs
            hits += policy == "persist"
        elif note:
            unstored.append(text)
            notes[text] = note
        elif outcome == E:
            misses += policy == "persist"
    # hits and misses count reuse of stored values (policy "persist"); the store keeps the totals
    sched.store.count("hits", hits)
    sched.store.count("misses", misses)
    return BuildReport(
        executed=lists[E], reused=lists[V] + lists[C], failed=lists[F],
        skipped=lists[S], unstored=unstored, constructed=lists[C], seconds=seconds,
        saved_seconds=saved, rows=(texts, outcomes, durations, notes),
        attempts={st.task._repr: st.attempts for st in sched.order if st.attempts > 1},
        overdue=[st.task._repr for st in sched.order if st.overdue],
        restored={sched.states[key].task._repr: list(paths) for key, paths in sched.restored.items()})
