"""Verifying a task against its stored traces: whether its stored value may be reused (the
scheduler's rebuilder, with early cutoff and constructive traces: trace.match).

Contract: `Verifying` is a part of the Scheduler (engine/scheduler.py), mixed in: it uses the
scheduler's `states`, `traces`, `store`, `files`, `known`, `targets` and its `_ensure`/`_one` to
bring a trace's dependencies up to date as they are checked, in recorded order.
- `_verify(st)`: True when a trace of the task's current rule version matches (every group of
  dependencies, fetched together, still has its recorded hashes; files and other inputs too; the
  files it wrote are put back and the environment variables it set set again): `st` then has the
  trace's hash and outcome "verified" (the newest trace) or "constructed" (an older one).
- `_stored_meanwhile(st)`: the same after looking for traces other processes recorded since.
- `version(rule)`: the rule's version, once per rule per build; `file_hash(path)`,
  `input_hash(key, task)`: what a dependency that is not a task is now; `owner(key)`: the task as
  engine/environment.py knows who set a variable.
"""
from __future__ import annotations

import logging
from typing import Any

from . import environment, inputs, outputs
from .state import DONE, TaskState
from .task import Task
from .trace import ENV_PREFIX, FILE_PREFIX, INPUT_PREFIX, Group, Trace, match
from .version import Version, rule_version

__all__ = ["Verifying"]

log = logging.getLogger("nbbuild")


class Verifying:
    def version(self, rule: Any) -> Version:
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

    def _verify(self, st: TaskState) -> bool:
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
        st.outcome = "verified" if pos == 0 else "constructed"
        return True

    def _stored_meanwhile(self, st: TaskState) -> bool:
        """Before running a task, a look for what other processes sharing the store recorded
        since: a task one of them just ran is reused here rather than run twice."""
        if st.task.rule.policy != "persist" or not self.store.refresh_if_changed():
            return False
        return self._verify(st)

    def _counts(self, st: TaskState, key: str) -> bool:
        """Whether an input is checked for this task: the random generators' state only for a
        target (inputs.for_targets_only): a version another task reads was made from where they
        were then, as plain execution does not run the cell that made it again."""
        return not inputs.for_targets_only(key) or st.task.key in self.targets

    def _group_matches(self, st: TaskState, group: Group) -> bool:
        """Do the dependencies of one recorded group (fetched together) still have their hashes?
        A failed dependency is a mismatch: if the body still needs it, it fails there."""
        if len(group) == 1:
            key, recorded = group[0]
            dep = self.states.get(key)
            if dep is None or dep.status < DONE:
                if key.startswith(INPUT_PREFIX):
                    return not self._counts(st, key) or self.input_hash(key, st.task.key) == recorded
                t = self.tasks.get(key) or self.ctx.task_for_key(key)
                if t is None:
                    return False
                dep = self._one(st, t, st.depth) or self._ensure(st, (t,), st.depth)[0]
            return dep.status == DONE and dep.hash == recorded
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
        deps = self._ensure(st, tasks, st.depth) if tasks else []
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
                with self.lock:
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
                with self.lock:
                    self.environ_restored.setdefault(key, []).extend(names)
        return True
