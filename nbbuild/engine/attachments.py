"""What a run attached (`trace.attach`: what a cell displayed, say), kept beside the value it gave
and outside that value's hash.

Contract: `Attachments(store)` (one per Build, in its engine context: engine/context.py).
`keep(task, digest, data, persist)` keeps what the run of `task` that gave value `digest`
attached: in memory, and with `persist` in the store too (a row of its own, rewritten by a later
run that gives the same value); called from any worker thread during a build. `get(key, digest)`
gives back what the run that gave value `digest` to the task `key` attached: from memory, else
from the store (and kept in memory then, as a run's is: a reused cell's record is asked for twice,
to replay its output and to show its result); None when its run attached nothing, or what is
stored cannot be loaded (a miss, as for values, with a warning). `clear()` forgets what memory
holds.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ..store import serialisation
from .task import Task

if TYPE_CHECKING:
    from ..store.store import Store

__all__ = ["Attachments"]

log = logging.getLogger("nbbuild")


class Attachments:
    def __init__(self, store: Store):
        self.store = store
        self._kept: dict[str, tuple[str, Any]] = {}     # task key -> (value hash, attachment)
        self._lock = threading.Lock()                   # taken from any worker thread during a build

    def keep(self, task: Task, digest: str, data: Any, persist: bool) -> None:
        with self._lock:
            self._kept[task.key] = (digest, data)
        if persist:
            try:
                self.store.put_attachment(task.key, digest, serialisation.serialize(data)[0])
            except serialisation.UnserializableValue as e:
                log.warning("nbbuild: what %r attached cannot be stored: %s", task, e)

    def get(self, key: str, digest: str, shown: Any = None) -> Any:
        """`shown`: the target as the warning names it."""
        found = self._kept.get(key)
        if found is not None and found[0] == digest:
            return found[1]
        blob = self.store.get_attachment(key, digest)
        if blob is None:
            return None
        try:
            data = serialisation.deserialize(blob)
        except Exception:  # as for values: a stored attachment that cannot be loaded is a miss
            log.warning("nbbuild: what %r attached could not be loaded", shown if shown is not None else key)
            return None
        with self._lock:
            self._kept[key] = (digest, data)
        return data

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
