"""How nbbuild writes durations and sizes, in every view (console, widgets, graph, messages).

Contract:
- `seconds_text(seconds, places=2)`: "0.25 s" (`places` decimals; the one-line console view
  writes 1), from 90 s on "2 min 5 s"; None is "—" (not known).
- `size_text(size)`: bytes in powers of 1000 with one decimal, in the units `parse_size` reads
  (store/eviction.py): "512 B", "5.0 KB", "2.4 MB", "1.0 GB"; None is "—".
"""
from __future__ import annotations

__all__ = ["seconds_text", "size_text"]

_SIZES = (("GB", 1e9), ("MB", 1e6), ("KB", 1e3))


def seconds_text(seconds: float | None, places: int = 2) -> str:
    if seconds is None:
        return "—"
    if seconds >= 90:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{seconds:.{places}f} s"


def size_text(size: int | None) -> str:
    if size is None:
        return "—"
    for unit, scale in _SIZES:
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
