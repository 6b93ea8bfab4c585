"""The team cache's controls on a Build (mixed into build.Build): a shared tier behind its store
(store/shared.py, store/sharing.py), put there or changed at any time, looked at and collected.

Contract:
- `share(url, readonly)` uses the shared tier at `url` from now on (None: none), as
  `Build(shared=)` does; SharedStoreError (one line) when it cannot be used as given.
- `shared` is the location in use, or None.
- `shared_gc(quota)` evicts the shared tier's values down to `quota` (None: none evicted) by the
  store's policy and merges its packs (store/shared_eviction.py); `shared_survey()` says what it
  holds. Both raise SharedStoreError when no shared tier is in use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import RuleError, SharedStoreError
from .store import shared_eviction
from .store.eviction import parse_size
from .settings import read as read_settings
from .store.shared import open_tier

if TYPE_CHECKING:
    from .store.store import Store

__all__ = ["TeamCache"]

_NONE = "no shared store in use: Build(shared=URL), NBBUILD_SHARED or %nbbuild store --shared URL names one"


class TeamCache:
    store: Store
    _turn: Any        # Build's: one build, or one change of the store, at a time

    def share(self, url: str | None, readonly: bool = False) -> None:
        """Use the shared tier at `url` from now on (None: none), as `Build(shared=)` does; raises
        SharedStoreError (no team key, a location that cannot be opened). The team key is the
        environment's now (settings.read), which may differ from when the Build was made."""
        tier = open_tier(url, readonly, read_settings()) if url else None
        with self._turn():
            self.store.share(tier)

    @property
    def shared(self) -> str | None:
        """The location of the shared tier in use, or None."""
        return None if self.store.sharing is None else self.store.sharing.tier.url

    def shared_gc(self, quota: int | str | None = None) -> tuple[int, int, int]:
        """Evict the shared tier's values down to `quota` (None: none evicted) by the store's
        policy, and merge its packs (shared_eviction.collect): (values, bytes, packs merged)."""
        if self.store.sharing is None:
            raise SharedStoreError(_NONE)
        try:
            size = parse_size(quota)
        except ValueError as e:
            raise RuleError(str(e)) from None
        return shared_eviction.collect(self.store.sharing.tier, size, self.store.policy)

    def shared_survey(self) -> shared_eviction.Survey:
        if self.store.sharing is None:
            raise SharedStoreError(_NONE)
        return shared_eviction.survey(self.store.sharing.tier)
