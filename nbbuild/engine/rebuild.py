"""The rebuilder (in the paper's sense): whether a task's stored value may be reused instead of
running it, and what a run leaves behind so that the next build can tell.

Contract:
- `walk(traces, version, known)` is the one verification walk, a generator: over the traces of
  the rule's current version, newest first, and each trace's groups of dependencies in recorded
  order, it yields one group at a time (asking: do these dependencies still have their recorded
  hashes? the driver sends True or False) and stops a trace at its first mismatch, so that it only
  ever asks for what running the rule would fetch (early cutoff: a dependency that ran again but
  gave the same hash is no mismatch). A group of one task `known` (key -> hash, tasks done in this
  build) is answered without asking. A trace whose dependencies all match and that wrote files or
  set environment variables is yielded itself (asking: are they as its run left them, once put
  back?). It returns (the first trace that matches, its position): position 0 is a verifying
  trace, more a constructive one (an edit was reverted); (None, -1) when none matches.
- `match(traces, version, state, known, group_matches, outputs_ready)` drives `walk` with
  callbacks: `group_matches(state, group)`, `outputs_ready(state, trace)` (None: outputs are not
  looked at). Pure: it reads nothing else.
- `Rebuilder(ctx, traces, bring)`: the rebuilder of one build over an engine context
  (engine/context.py); `traces` is the store's index (key -> traces newest first), `bring(state,
  tasks)` brings dependencies up to date and returns their states (the scheduler's, which may
  suspend the asking greenlet). Without `bring` it only answers `version`, `owner` and
  `input_hash` (explain.py drives `walk` itself: it never brings anything up to date).
  - `version(rule)`: the rule's version, once per rule per build; `file_hash(path)`,
    `input_hash(key, task)`: what a dependency that is not a task is now (a task's own
    environment variables count at their values before it: `owner(key)` names it to
    environment.py).
  - `verify(state)`: True when a trace of the task's current rule version matches (`walk`, every
    group brought up to date as it is checked; files and other inputs too; the files it wrote are
    put back and the environment variables it set set again: outputs.py, environment.py); the
    state then has the trace's hash and outcome "verified" or "constructed". `stored_meanwhile`:
    the same after looking for traces other processes recorded since.
  - `record(state, rec, version, written, effects, persist)`: the trace of a run that succeeded,
    stored (with `persist`, else kept in this process) after its value and files.
  - `start(targets)`: before the build, what this process verified in earlier builds and whose
    inputs did not change (the red-green set, engine/verified.py) is `known`; `remember(states)`
    after it keeps what this build verified or ran for the next one.
  - `known`, `targets` (keys this build was asked for), `restored` (task key -> files put back),
    `environ_restored` (task key -> variables set again).
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable, Generator, Iterable, Sequence

from . import environment, inputs, outputs
from .context import EngineContext
from .state import DONE, Outcome, TaskState
from .task import Task
from .trace import ENV_PREFIX, FILE_PREFIX, INPUT_PREFIX, Group, Recorder, Trace
from .version import Version, rule_version

if TYPE_CHECKING:
    from .rule import Rule

__all__ = ["walk", "match", "Rebuilder"]

log = logging.getLogger("nbbuild")

Walk = Generator["Group | Trace", bool, "tuple[Trace | None, int]"]


def walk(traces: Sequence[Trace], version: str, known: dict[str, str]) -> Walk:
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
            if not (yield group):
                break
        else:
            # outputs last: only a trace that matches otherwise may write its files back (and
            # set the environment variables its run set)
            if not (trace.outputs or trace.environ) or (yield trace):
                return trace, i
    return None, -1


def match(traces: Sequence[Trace], version: str, state: TaskState, known: dict[str, str],
          group_matches: Callable[[TaskState, Group], bool],
          outputs_ready: Callable[[TaskState, Trace], bool] | None = None) -> tuple[Trace | None, int]:
    steps = walk(traces, version, known)
    try:
        ask = next(steps)
        while True:
            if isinstance(ask, tuple):   # a group of dependencies, else a trace whose outputs to check
                ask = steps.send(group_matches(state, ask))
            else:
                ask = steps.send(outputs_ready is None or outputs_ready(state, ask))
    except StopIteration as done:
        return done.value


class Rebuilder:
    def __init__(self, ctx: EngineContext, traces: dict[str, list[Trace]] | None = None,
                 bring: Callable[[TaskState, Sequence[Task]], list[TaskState]] | None = None):
        self.ctx = ctx
        self.store = ctx.store
        self.files = ctx.files
        self.traces = traces if traces is not None else {}
        self.bring = bring
        self.versions: dict[Rule, Version] = {}
        self.known: dict[str, str] = {}        # key -> value hash of every task done in this build
        self.targets: frozenset[str] = frozenset()
        self.restored: dict[str, list[str]] = {}
        self.environ_restored: dict[str, list[str]] = {}
        self._lock = threading.Lock()           # restored and environ_restored grow from any thread

    # ------------------------------------------------------------ what inputs are now

    def version(self, rule: Rule) -> Version:
        """The rule's version, computed once per rule per build (globals may change between builds)."""
        v = self.versions.get(rule)
        if v is None:
            v = self.versions[rule] = rule_version(rule.fn, self.ctx.is_engine_object)
        return v

    def file_hash(self, path: str) -> str:
        return self.files.hash(path)

    def owner(self, key: str) -> tuple[str, str]:
        """The task of this store, as environment.py knows who set a variable."""
        return (self.store.path, key)

    def input_hash(self, key: str, task: str | None = None) -> str:
        """The hash a dependency that is not a task (a file, an environment variable) has now, for
        the task `task` (what it set itself counts at its value before)."""
        if key.startswith(FILE_PREFIX):
            return self.files.hash(key[len(FILE_PREFIX):])
        return inputs.digest(key, self.owner(task) if task is not None else None)

    # ------------------------------------------------------------ verifying

    def verify(self, st: TaskState) -> bool:
        rule = st.task.rule
        policy = rule.policy
        if policy == "none":
            return False
        version = self.versions.get(rule) or self.version(rule)
        key = st.task.key
        traces = self.traces.get(key) if policy == "persist" else None
        in_memory = self.store.memory_traces.get(key)   # policy "memory", or values that could not be stored
        if in_memory:
            traces = in_memory + traces if traces else in_memory
        if not traces:
            return False
        trace, pos = match(traces, version.version, st, self.known, self._group_matches, self._outputs_ready)
        if trace is None:
            return False
        st.hash, st.trace, st.seconds = trace.result, trace, trace.seconds
        st.outcome = Outcome.VERIFIED if pos == 0 else Outcome.CONSTRUCTED
        return True

    def stored_meanwhile(self, st: TaskState) -> bool:
        """Before running a task, a look for what other processes sharing the store recorded
        since: a task one of them just ran is reused here rather than run twice."""
        if st.task.rule.policy != "persist" or not self.store.refresh_if_changed():
            return False
        return self.verify(st)

    def _counts(self, st: TaskState, key: str) -> bool:
        """Whether an input is checked for this task: the random generators' state only for a
        target (inputs.for_targets_only): a version another task reads was made from where they
        were then, as plain execution does not run the cell that made it again."""
        return not inputs.for_targets_only(key) or st.task.key in self.targets

    def _group_matches(self, st: TaskState, group: Group) -> bool:
        """Do the dependencies of one recorded group (fetched together) still have their hashes?
        A failed dependency is a mismatch: if the body still needs it, it fails there."""
        tasks: list[Task] = []
        for key, recorded in group:
            if key.startswith(INPUT_PREFIX):
                if self._counts(st, key) and self.input_hash(key, st.task.key) != recorded:
                    return False
            else:
                t = self.ctx.task_for_key(key)
                if t is None:
                    return False
                tasks.append(t)
        if not tasks:
            return True
        deps = self.bring(st, tasks)        # type: ignore[misc]
        wanted = [rec for key, rec in group if not key.startswith(INPUT_PREFIX)]
        return all(d.status == DONE and d.hash == rec for d, rec in zip(deps, wanted))

    def _outputs_ready(self, st: TaskState, trace: Trace) -> bool:
        """Are the files the trace's run wrote as it left them, once put back from the store? Then
        the environment variables it set are set again. Of those the task was the last to write, or
        all when it is a target (outputs.Owners)."""
        key = st.task.key
        owners = self.ctx.owners
        mine = owners.mine(key, key in self.targets)
        if trace.outputs:
            put: list[str] = []
            ready = outputs.restore(self.store, self.files.hash, trace, put, mine)
            if put:
                with self._lock:
                    self.restored.setdefault(key, []).extend(put)
            if not ready:
                return False
            owners.claim(key, [o[0] for o in trace.outputs if mine(o[0])])
        if trace.environ:
            effects = [e for e in trace.environ if mine(ENV_PREFIX + e[0])]
            try:
                names = environment.restore(self.owner(key), effects)
            except (OSError, ValueError) as e:   # a value this platform refuses: running it sets what it can
                log.warning("nbbuild: the environment variables %r set could not be set again (%s); it runs again",
                            trace.repr, e)
                return False
            owners.claim(key, [ENV_PREFIX + name for name, _ in effects])
            if names:
                with self._lock:
                    self.environ_restored.setdefault(key, []).extend(names)
        return True

    # ------------------------------------------------------------ recording

    def record(self, st: TaskState, rec: Recorder, version: Version, written: tuple, effects: tuple,
               persist: bool) -> None:
        task = st.task
        assert st.hash is not None      # its body gave a value, hashed (body.py)
        trace = Trace(task.key, task.rule.name, task.encoded, repr(task), version.version, rec.dependencies(),
                      st.hash, st.seconds, version.parts, version.packages, outputs=written, environ=effects)
        # a value the store could not take keeps a persistent trace all the same: its hash lets
        # dependents be verified without it, and a later build that needs it runs the task
        self.store.record(trace, persist=persist)
        st.trace = trace

    # ------------------------------------------------------------ between builds (red-green)

    def start(self, targets: Iterable[str]) -> None:
        """What this process verified before (in a fresh one: what the store kept of the last
        build's) and whose inputs did not change is known up to date; a target's files are all put
        back, as running it again plainly writes them all again."""
        ctx, keys = self.ctx, set(targets)
        if ctx.verified.fresh:      # a fresh process: what the last build of this key verified
            ctx.verified.restore(self.store.verified(), self.store.traces_index())
        ctx.verified.invalidate(ctx.rules, self.version, self.files.hash,
                                lambda key: ctx.owners.mine(key, key in keys), self.owner)
        self.known.update(ctx.verified.hashes)

    def remember(self, states: Iterable[TaskState]) -> None:
        self.ctx.verified.record(states, self.versions, DONE)
        self.ctx.verified.keep(self.store.keep_verified)
