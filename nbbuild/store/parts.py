"""What the parts of Store mixed into it (values.py, tiering.py, inventory.py) use of it.

Contract: `StoreParts` is their common base. It declares, for the type checker only, the
attributes Store's constructor sets and the methods Store defines that the parts call; at run time
it adds nothing (no attribute, no method), so a part used without Store fails loudly.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, AbstractSet, Callable

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from .serialisation import Serialized
    from .index import Index
    from .sharing import Sharing
    from .signing import Signer
    from .table import Table

__all__ = ["StoreParts"]


class StoreParts:
    signer: Signer
    table: Table
    path: str
    index: Index
    sharing: Sharing | None
    quota: int | None
    min_free: int
    policy: str
    quota_source: str       # what set the quota (eviction.resolve)
    held: Callable[[], AbstractSet[str]]
    on_room: Callable[[int], None] | None
    clock: float
    written: int
    write_error: str | None
    _tmp: str
    _lock: threading.RLock
    _pending: dict[str, bytes]
    _pending_bytes: int
    _touched: dict[str, list[float]]
    _refused: dict[str, Serialized]

    if TYPE_CHECKING:
        def _theirs(self, key: str, value: Any, filename: Any = None) -> bool: ...
        def _foreign(self, key: str) -> None: ...
        def _write(self, key: str, data: bytes) -> None: ...
        def _write_failed(self, error: BaseException) -> str: ...
        def _remove_files(self, names: list[str]) -> int: ...
        def flush(self, counters_too: bool = False) -> None: ...
        def free_space(self) -> int: ...
        def count(self, name: str, n: int = 1) -> None: ...
        def counter(self, name: str) -> int: ...
        def delete_rows(self, keys: list[str]) -> int: ...
        def traces_index(self) -> dict[str, list[Trace]]: ...
