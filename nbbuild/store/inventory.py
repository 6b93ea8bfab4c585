"""Inventory: what a store holds, in figures (its volume, free disk, values, counters) and by
owner (this key's entries, and those other keys cosigned or signed: foreign.py).

Contract: `Inventory` is a part of Store (store.py), mixed in: it uses the store's table, signer
and counters; only `gc_foreign` writes (it removes every row another key signed).
"""
from __future__ import annotations

import shutil
from typing import Any

from . import foreign, valuefile
from .parts import StoreParts

__all__ = ["Inventory"]


class Inventory(StoreParts):
    def volume(self) -> int:
        """Bytes on disk: the database and the value files (diskcache keeps this cheaply)."""
        return self.table.volume()

    def pending_bytes(self) -> int:
        return self._pending_bytes

    def free_space(self) -> int:
        try:
            return shutil.disk_usage(self.path).free
        except OSError:
            return 2 ** 62

    def value_rows(self) -> list[tuple[str, int, float, float, int, float]]:
        """(hash, stored bytes, stored at, last used, uses, policy clock at last use) of every
        stored value, uses not yet written included."""
        self.flush(counters_too=True)
        return self.table.value_rows(self.signer.kid, lambda k, v, f: not self._theirs(k, v, f) or
                                     self.table.get(foreign.cosign(k[2:], self.signer.kid)) is not None)

    def value_sizes(self) -> list[tuple[str, int, float]]:
        """(hash, size in bytes, stored at) of every stored value."""
        return [(d, size, stored) for d, size, stored, *_ in self.value_rows()]

    def stats(self) -> dict[str, Any]:
        self.flush(counters_too=True)
        return {
            "size_bytes": self.volume(),
            "quota_bytes": self.quota,
            "free_bytes": self.free_space(),
            "min_free_bytes": self.min_free,
            "policy": self.policy,
            "values": self.table.count("v:"),
            "value_files": self.table.count("v:", files_only=True),
            "traces": self.table.count("t:"),
            **{name: self.counter(name) for name in ("hits", "misses", "evictions", "bytes_written", "bytes_read",
                                                     "damaged", "write_failures")},
            "path": self.path,
        }

    def shared_values(self) -> set[str]:
        """Hashes of this key's values that another key cosigned: theirs too, so never evicted
        by this key (another key's entry is not this key's to delete)."""
        return {row[2:] for row in self._cosigned_by_others()}

    def _cosigned_by_others(self) -> list[str]:
        """This key's value rows that another key cosigned (foreign.cosign): theirs too, so kept."""
        mine = "#" + self.signer.kid.hex()
        return [valuefile.row_key(k[2:].split("#", 1)[0]) for k, *_ in self.table.scan("c:") if not k.endswith(mine)]

    def own_entries(self) -> tuple[int, int, int]:
        """(values, their bytes, traces) this key would lose to clear()."""
        values = self.value_rows()
        traces = sum(1 for k, v, _, f in self.table.scan("t:") if not self._theirs(k, v, f))
        return len(values), sum(size for _, size, *_ in values), traces

    def gc_foreign(self) -> tuple[int, int]:
        """Remove every row another key signed, and their value files: (rows, bytes) removed."""
        with self._lock:
            found = foreign.rows(self.table, self.signer)
            if found:
                self.delete_rows([k for k, _ in found])
            return len(found), sum(size for _, size in found)
