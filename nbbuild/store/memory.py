"""Values kept in memory between builds of one Build, so that a no-op rebuild in the same process
loads nothing from the store.

Contract:
- `Memory(store)`: `remember(digest, value, size)` keeps a value by its hash, least recently used
  out first, within `MEMORY_BYTES` of serialized size and `MEMORY_VALUES` entries (the newest
  stays even when it alone is larger). Safe from any worker thread.
- `recall(digest, checked, task)` -> (found, value): from memory, or loaded from the store (and
  remembered). A remembered value that is not immutable is hashed again once per build (`checked`
  holds what this build checked): one changed in place since it was built is dropped, with a
  warning, and the stored value is used instead. A value loaded from the store is compared with
  its hash as loaded too: loaded back, it may pickle to other bytes than were stored, and that is
  no change. That hash is taken only when a later check needs it (from a copy loaded then), not
  at every load: a value reused once (a restart, Run All) is unpickled once and never hashed. But
  for a value holding classes pickled by value (the notebook's own): two loads of it in one
  process may pickle differently (cloudpickle hands the second the classes the first made), so
  it is hashed as loaded at once. A stored value that cannot be used is a miss, with a
  warning naming the task.
- `forget(digest=None)` drops one value, or all; the store keeps them. `digest in memory` and
  `size(digest)` look without loading.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from . import serialisation

if TYPE_CHECKING:
    from ..engine.task import Task
    from .store import Store

__all__ = ["Memory", "MEMORY_BYTES", "MEMORY_VALUES"]

log = logging.getLogger("nbbuild")
MEMORY_BYTES = 1 << 30
MEMORY_VALUES = 100_000
_IMMUTABLE = (int, float, str, bytes, bool, type(None), complex, frozenset)
_ABSENT = object()


class Memory:
    def __init__(self, store: Store):
        self.store = store
        self.values: OrderedDict[str, Any] = OrderedDict()
        self.sizes: dict[str, int] = {}
        self.bytes = 0
        self.loaded: dict[str, str] = {}     # digest -> the hash of its value as loaded, where they differ
        self.unhashed: set[str] = set()      # loaded from the store, its hash as loaded not taken yet
        self._lock = threading.Lock()

    def __contains__(self, digest: str) -> bool:
        return digest in self.values

    def size(self, digest: str) -> int | None:
        return self.sizes.get(digest)

    def remember(self, digest: str, value: Any, size: int) -> None:
        with self._lock:
            if digest in self.values:
                self.values.move_to_end(digest)
                return
            self.values[digest] = value
            self.sizes[digest] = size
            self.bytes += size
            while len(self.values) > 1 and (self.bytes > MEMORY_BYTES or len(self.values) > MEMORY_VALUES):
                old, _ = self.values.popitem(last=False)
                self.bytes -= self.sizes.pop(old)
                self.loaded.pop(old, None)
                self.unhashed.discard(old)

    def recall(self, digest: str, checked: set[str], task: Task | None = None) -> tuple[bool, Any]:
        value = self.values.get(digest, _ABSENT)
        if value is not _ABSENT:
            if isinstance(value, _IMMUTABLE) or digest in checked or digest.startswith("u:"):
                return True, value
            now: str | None = None
            try:
                now = serialisation.value_hash(value)
                # a value loaded back may pickle to other bytes than were stored (a pandas
                # frame's blocks laid out anew, a set in another process, a function of
                # `__main__` reading the notebook's globals): its hash as loaded counts too; and
                # some objects pickle differently each time (a matplotlib Figure counts its
                # pickles): a second hash that differs again means "cannot tell", not "changed"
                same = now == digest or now == self.loaded.get(digest) or serialisation.value_hash(value) != now
            except serialisation.UnserializableValue:
                same = False
            fresh: Any = _ABSENT
            if not same and now is not None and digest in self.unhashed:
                # loaded, its hash as loaded not taken yet: a copy loaded now pickles as it did
                fresh, same = self._as_loaded(digest, now)
            if same:
                checked.add(digest)
                return True, value
            log.warning("nbbuild: a value was changed in place after it was built; using the stored one")
            self.forget(digest)
            if fresh is not _ABSENT:
                checked.add(digest)
                self.remember(digest, fresh, self.store.value_size(digest) or 0)
                return True, fresh
        by_value: set[str] = set()
        found, value, why = self.store.load(digest, by_value)
        if not found:
            if why:
                log.warning("nbbuild: the stored value of %s could not be used: %s; it runs again",
                            repr(task) if task is not None else digest, why)
            return False, None
        checked.add(digest)
        self.remember(digest, value, self.store.value_size(digest) or 0)
        if by_value:
            self._note_loaded(digest, value)
        elif not isinstance(value, _IMMUTABLE):
            with self._lock:
                if digest in self.values:
                    self.unhashed.add(digest)
        return True, value

    def _note_loaded(self, digest: str, value: Any) -> None:
        """The hash of a value as loaded, where it is not the stored one: what it is compared with."""
        try:
            now = serialisation.value_hash(value)
        except serialisation.UnserializableValue:
            return
        if now != digest:
            with self._lock:
                if digest in self.values:
                    self.loaded[digest] = now

    def _as_loaded(self, digest: str, now: str) -> tuple[Any, bool]:
        """(a copy of the value loaded from the store now, or _ABSENT; whether `now` is its hash as
        loaded). The hash is kept for later checks."""
        with self._lock:
            self.unhashed.discard(digest)
        found, fresh, _ = self.store.load(digest)
        if not found:
            return _ABSENT, False     # gone from the store: it cannot be told unchanged
        try:
            loaded = serialisation.value_hash(fresh)
        except serialisation.UnserializableValue:
            return fresh, False
        if loaded != digest:
            with self._lock:
                if digest in self.values:
                    self.loaded[digest] = loaded
        return fresh, loaded == now

    def forget(self, digest: str | None = None) -> None:
        with self._lock:
            for d in [digest] if digest is not None else list(self.values):
                if self.values.pop(d, None) is not None or d in self.sizes:
                    self.bytes -= self.sizes.pop(d, 0)
                self.loaded.pop(d, None)
                self.unhashed.discard(d)
