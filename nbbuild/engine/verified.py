"""What this process already verified, and what would make it stale (red-green marking).

Contract:
- After a build, `record(states, versions)` keeps, for every task the build brought up to date,
  its value hash, the dependencies and files its trace names (with the hashes it saw), its repr and
  run time, and the version of each rule as computed in that build.
- Before the next build, `invalidate(rules, version_of, file_hash, mine, owner)` re-checks only
  the inputs: each remembered rule's version once (a global it reads may have changed, or the rule
  been redefined or removed), each remembered file once, and drops every task that reads a changed
  input (environment variables it read included, but for those it set itself: `owner(key)` names
  it to environment.py), every task whose written files (outputs.py) are missing or changed, or
  whose environment variables no longer hold what it set (of the files and variables it was the
  last to write, `mine(key)(path)`: outputs.Owners; the build visits it, and puts them back),
  every task of policy "none", and, transitively, every task that depends on a dropped one.
  What remains is up to date without visiting it: the scheduler takes those hashes as known.
- `closure(keys, skip)` lists, dependencies first, the remembered tasks the targets reach, for the
  report: a task up to date this way was reused even though the build never touched it.
- Kept for a fresh process: `dump()` gives what is remembered of tasks of policy "persist" (each
  as its key, value hash and which of its stored traces), the rule versions and the tasks of policy
  "none"; `changed` says whether there is anything new to dump, and `keep(write)` writes it then,
  at most a twentieth of the time between builds (an older record is safe: see restore). `restore(data, traces)` in a
  fresh process takes them back, each task with its trace as the store's index holds it, but not
  a task whose trace the index no longer holds (evicted, pruned, never stored) or holds a newer one
  of its version, whose trace read another hash of a task taken back, or that wrote files or set
  variables (only a visit claims them: outputs.Owners). The next `invalidate` drops everything
  that depends on a task not taken back (of policy "memory", say): what those read is not known,
  so neither is whether they are up to date. The rest is re-checked by its inputs like anything
  verified in this process (a fresh process's own rule versions, files and variables).
- `record` also drops what read a task whose hash has moved since (run again, forced, a value not
  deterministic) and that this build did not visit, with its dependents.
"""
from __future__ import annotations

import marshal
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Callable, Iterable, cast

from . import environment, inputs
from .trace import ENV_PREFIX

if TYPE_CHECKING:
    from typing import Container, Mapping
    from .environment import Owner
    from .rule import Rule
    from .state import TaskState
    from .trace import Trace
    from .version import Version

__all__ = ["CleanSet"]

_FORMAT = "nbbuild-verified-1"
_DECODE_ERRORS = (ValueError, EOFError, TypeError)


class CleanSet:
    def __init__(self) -> None:
        self.hashes: dict[str, str] = {}
        self.entries: dict[str, tuple[Trace, str, float, str]] = {}   # trace, repr, seconds, policy
        self.versions: dict[str, str] = {}
        self.volatile: set[str] = set()                                # policy "none": never clean
        self.changed = False            # anything remembered or dropped since the last dump
        self.fresh = True               # nothing taken back from the store yet (restore)
        self._due = 0.0                 # when `keep` may write again
        self._unknown: set[str] = set()  # restored tasks whose trace is gone: dropped with dependents
        self._persisted: set[str] = set()  # rules of restored tasks: all of policy "persist" then

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def record(self, states: Iterable[TaskState], versions: dict[Rule, Version], done: int) -> None:
        moved: set[str] = set()       # tasks whose value changed (run again, forced, not deterministic)
        for st in states:
            key, rule = st.task.key, st.task.rule
            if rule.policy == "none":
                if key not in self.volatile:
                    self.volatile.add(key)
                    self.changed = True
                self._drop(key)
            elif st.status == done and st.trace is not None:
                entry = self.entries.get(key)
                if entry is None or entry[0] is not st.trace or entry[3] != rule.policy:
                    self.changed = True
                if key in self.volatile:      # a rule of policy "none" once, not now
                    self.volatile.discard(key)
                    self.changed = True
                before = self.hashes.get(key)
                if before is not None and before != st.hash:
                    moved.add(key)
                self.hashes[key] = cast(str, st.hash)     # done: hashed
                self.entries[key] = (st.trace, st.task._repr, st.seconds, rule.policy)
            else:
                self._drop(key)
        for rule, v in versions.items():
            if self.versions.get(rule.name) != v.version:
                self.versions[rule.name] = v.version
                self.changed = True
        if moved:
            # a task remembered as read by one that this build did not visit (a forced target, a
            # value not deterministic run again) no longer has the hash that task's trace saw
            stale = set()
            for key, entry in self.entries.items():
                for group in entry[0].deps:
                    if any(k in moved and h != self.hashes[k] for k, h in group):
                        stale.add(key)
                        break
            self._drop_with_dependents(stale)

    def _drop(self, key: str) -> None:
        if self.hashes.pop(key, None) is not None:
            self.changed = True
        self.entries.pop(key, None)

    # ------------------------------------------------------------ for a fresh process

    def dump(self) -> bytes:
        rows = [(key, trace.result, trace.created, seconds)
                for key, (trace, _, seconds, policy) in self.entries.items() if policy == "persist"]
        self.changed = False
        return marshal.dumps((_FORMAT, self.versions, sorted(self.volatile), rows))

    def keep(self, write: Callable[[bytes], None], now: bool = False) -> None:
        """`write(self.dump())` when something changed: `now`, or when at most a twentieth of the
        time since the last write went to writing (it is written whole; an older one is safe)."""
        if not self.changed or (not now and time.monotonic() < self._due):
            return
        start = time.monotonic()
        write(self.dump())
        self._due = time.monotonic() + 20 * (time.monotonic() - start)

    def restore(self, data: bytes | None, traces: Mapping[str, list[Trace]]) -> None:
        """Take back what `dump` gave (in another process); nothing when `data` is None or not one."""
        self.fresh = False
        if data is None:
            return
        hashes: dict[str, str] = {}
        entries: dict[str, tuple[Trace, str, float, str]] = {}
        unknown, persisted, bad = self._unknown, self._persisted, set()
        try:
            form, versions, volatile, rows = marshal.loads(data)
            if form != _FORMAT:
                return
            get = traces.get
            for key, result, created, seconds in rows:
                newer = set()
                for t in get(key, ()):      # newest first: almost always the first
                    if t.created == created and t.result == result:
                        break
                    newer.add(t.version)
                else:
                    unknown.add(key)
                    continue
                hashes[key] = result
                entries[key] = (t, t.repr, float(seconds), "persist")
                # a newer trace of its version (another process's, say) may be the one a walk
                # takes; the files and variables it wrote are claimed only by being visited
                # (outputs.Owners: which of the tasks writing one file was last)
                if t.version in newer or t.outputs or t.environ:
                    bad.add(key)
            versions = {str(k): str(v) for k, v in versions.items()}
            volatile = {str(k) for k in volatile}
        except (*_DECODE_ERRORS, AttributeError):
            unknown.clear()
            return
        reads = []
        for key, (t, _, _, _) in entries.items():
            # what it read must be what was taken back (a dependency forced or run again since
            # it was verified had another value)
            if any(k in hashes and hashes[k] != h for group in t.deps for k, h in group):
                bad.add(key)
            reads.append(t.split()[0])
        for key in bad:
            del hashes[key], entries[key]
        unknown.update(bad)
        # a dependency not taken back (of policy "memory", its trace gone) is not known up to
        # date: the next invalidate drops what depends on it
        unknown.update(set().union(*reads).difference(hashes))
        persisted.update(t.rule for t, _, _, _ in entries.values())
        self.hashes.update(hashes)
        self.entries.update(entries)
        self.versions.update(versions)
        self.volatile.update(volatile)

    def _deps(self, key: str) -> tuple[str, ...]:
        entry = self.entries.get(key)
        return entry[0].split()[0] if entry is not None else ()

    def invalidate(self, rules: dict[str, Rule], version_of: Callable[[Rule], Version],
                   file_hash: Callable[[str], str],
                   mine: Callable[[str], Callable[[str], bool]] | None = None,
                   owner: Callable[[str], Owner | None] = lambda key: None) -> None:
        unknown, self._unknown = self._unknown, set()
        persisted, self._persisted = self._persisted, set()
        if not self.hashes:
            return
        changed = set()
        for name, version in self.versions.items():
            rule = rules.get(name)
            try:
                same = (rule is not None and rule.policy != "none" and version_of(rule).version == version
                        and (rule.policy == "persist" or name not in persisted))
            except Exception:  # the scheduler reports such a rule's failure; here it is just not clean
                same = False
            if not same:
                changed.add(name)
        seeds = self.volatile | unknown
        if changed:
            seeds.update(k for k in self.hashes if k.partition("/")[0] in changed)
        now: dict[str, str] = {}

        def differ(pairs: Iterable[tuple[str, str]], digest: Callable[[str], str], cached: bool = True) -> bool:
            for name, recorded in pairs:      # environment keys are prefixed: no clash with paths
                h = now.get(name) if cached else None
                if h is None:
                    h = digest(name)
                    if cached:
                        now[name] = h
                if h != recorded:
                    return True
            return False

        for key, entry in self.entries.items():
            trace = entry[0]
            files, env = trace.split()[1], trace.environment()
            # a task's own variables count at their values before it: its hashes are not the others'
            who = owner(key) if env else None
            own = who is not None and environment.owns(who)
            last = mine(key) if mine is not None and (trace.outputs or trace.environ) else None
            if (files and differ(files, file_hash)
                    or env and differ(env, (lambda k: inputs.digest(k, who)) if own else inputs.digest, not own)
                    or trace.outputs and differ(((p, content) for p, content, _ in trace.outputs
                                                 if last is None or last(p)), file_hash)
                    or trace.environ and environment.pending([e for e in trace.environ
                                                              if last is None or last(ENV_PREFIX + e[0])])):
                seeds.add(key)
        self._drop_with_dependents(seeds)

    def _drop_with_dependents(self, seeds: set[str]) -> None:
        if not seeds:
            return
        dependents = defaultdict(list)
        for key in self.entries:
            for d in self._deps(key):
                dependents[d].append(key)
        stack, dirty = list(seeds), set(seeds)
        while stack:
            for parent in dependents.get(stack.pop(), ()):
                if parent not in dirty:
                    dirty.add(parent)
                    stack.append(parent)
        for key in dirty:
            self._drop(key)

    def closure(self, keys: Iterable[str], skip: Container[str]) -> list[tuple[str, float, str]]:
        """(repr, seconds, policy) of the remembered tasks `keys` reach and `skip` does not hold,
        dependencies before dependents."""
        out: list[tuple[str, float, str]] = []
        seen: set[str] = set()
        entries = self.entries
        for root in keys:
            if root in seen:
                continue
            seen.add(root)
            stack = [(root, iter(self._deps(root)))]
            while stack:
                key, it = stack[-1]
                for d in it:
                    if d not in seen:
                        seen.add(d)
                        stack.append((d, iter(self._deps(d))))
                        break
                else:
                    stack.pop()
                    if key not in skip and key in entries:
                        _, text, seconds, policy = entries[key]
                        out.append((text, seconds, policy))
        return out
