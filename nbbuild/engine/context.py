"""The engine context: everything the scheduler, the body runner and `explain` use of a Build,
made by the Build and handed to them, so that none of them reaches into the Build itself.

Contract: an `EngineContext` is frozen (which objects it holds never changes; the tables and sets
they are change as builds go). It holds
- `store` (store/store.py, or anything with the methods they call: a fake in tests), `files` (the
  file hasher: engine/files.py), `memory` (values kept in memory: store/memory.py), `owners` (which
  task wrote each file or variable last: outputs.Owners), `verified` (what this process verified:
  the red-green set, engine/verified.py), `attachments` (what runs attached: engine/attachments.py);
- the rule table `rules` (name -> Rule) and the task table `tasks` (key -> Task of this process);
  `task_for_key(key)` is the task of a key, read back from its trace when this process has not
  made it (None when its rule is gone); `is_engine_object(obj)` tells a rule version (version.py)
  which globals are the engine's own (`engine_types`) and no input;
- `pool`, the helper threads (executors/hubs.py), and `executor_for(rule)`, what runs its bodies
  (None: here, on a thread);
- what the last builds found, for `explain`: `failures` (task key -> why its last build failed),
  `restored` (task key -> files its last check put back) and `environ_restored` (-> variables set
  again);
- `owner`: the object whose rules these are (`Rule.build`), for identity only: a rule called
  inside a running body of this context's build is a fetch, of another build's a build of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .attachments import Attachments
from .files import FileHasher
from .outputs import Owners
from .rule import Rule
from .task import Task
from .verified import CleanSet

if TYPE_CHECKING:
    from ..executors.hubs import HelperPool
    from ..executors.protocol import Executor
    from ..store.memory import Memory
    from ..store.store import Store

__all__ = ["EngineContext"]


def _no_executor(rule: Rule | None) -> Executor | None:
    return None


@dataclass(frozen=True)
class EngineContext:
    store: Store
    memory: Memory
    pool: HelperPool
    attachments: Attachments
    rules: dict[str, Rule] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    files: FileHasher = field(default_factory=FileHasher)
    owners: Owners = field(default_factory=Owners)
    verified: CleanSet = field(default_factory=CleanSet)
    executor_for: Callable[[Rule | None], Executor | None] = _no_executor
    engine_types: tuple[type, ...] = (Rule,)
    owner: object = None
    failures: dict[str, str] = field(default_factory=dict)
    restored: dict[str, list[str]] = field(default_factory=dict)
    environ_restored: dict[str, list[str]] = field(default_factory=dict)

    def is_engine_object(self, obj: Any) -> bool:
        return isinstance(obj, self.engine_types)

    def task_for_key(self, key: str) -> Task | None:
        task = self.tasks.get(key)
        if task is not None:
            return task
        trace = self.store.any_trace(key)
        rule = self.rules.get(trace.rule) if trace is not None else None
        if trace is None or rule is None:
            return None
        task = rule.task_from_encoded(key, trace.args, trace.repr)
        self.tasks[key] = task
        return task
