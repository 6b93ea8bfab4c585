"""What a run attached (`trace.attach`: what a cell displayed, say), kept beside the value it gave
and outside that value's hash.

Contract: `Attachments` is a part of Build (mixed in). `_keep_attachment(task, digest, data,
persist)` keeps what the run of `task` that gave value `digest` attached: in memory, and with
`persist` in the store too (a row of its own, rewritten by a later run that gives the same value).
`attachment(target)` gives it back for the target's current value in this process: from memory,
else from the store; None when the target is not up to date here, its run attached nothing, or
what is stored cannot be loaded (a miss, as for values, with a warning).
"""
from __future__ import annotations

import logging
from typing import Any

from ..store import serialisation
from .task import Task

__all__ = ["Attachments"]

log = logging.getLogger("nbbuild")


class Attachments:
    def _keep_attachment(self, task: Task, digest: str, data: Any, persist: bool) -> None:
        with self._attachments_lock:
            self._attachments[task.key] = (digest, data)
        if persist:
            try:
                self.store.put_attachment(task.key, digest, serialisation.serialize(data)[0])
            except serialisation.UnserializableValue as e:
                log.warning("nbbuild: what %r attached cannot be stored: %s", task, e)

    def attachment(self, target: Any) -> Any:
        """What the run that gave the target its current value attached (`trace.attach`), or None
        when the target is not up to date in this process or its run attached nothing."""
        key = self._target(target).key
        digest = self._clean.hashes.get(key)
        if digest is None:
            return None
        found = self._attachments.get(key)
        if found is not None and found[0] == digest:
            return found[1]
        blob = self.store.get_attachment(key, digest)
        try:
            return serialisation.deserialize(blob) if blob is not None else None
        except Exception:  # as for values: a stored attachment that cannot be loaded is a miss
            log.warning("nbbuild: what %r attached could not be loaded", target)
            return None
