"""A rule cell's record (replay.py's `Capture`) shown again, when its value is reused instead of
made: from memory, from the store, or after a kernel restart.

Contract:
- `replay(shell, record)` shows a record again, in order: its streams, its displays, its notes;
  its figures are held (`held(shell)`) until `after_cell(shell)` (IPython's post_execute, after
  Out[n]) shows them, as plain Jupyter's inline backend draws them after the cell. A shell never
  shows another's (tests make several shells in one process). False when `record` is not one.
- `show_result(shell, value, record)`: `value` is the cell's result (what its magic returns,
  Out[n]); IPython's displayhook shows it as the record says it was formatted when it was made,
  for that value (identity) and that cell only. `expect(shell, value, data, metadata)` is that
  for a result formatted just now (replay.Capture hands the body's result over so).
- `FORMAT` tags a record: a tuple (FORMAT, events).
"""
from __future__ import annotations

import sys
import weakref
from typing import Any

__all__ = ["FORMAT", "replay", "show_result", "after_cell", "held", "expect"]

FORMAT = "nbbuild-output-1"

# a shell -> the figures to show once its cell's result is shown
_after_result: weakref.WeakKeyDictionary[Any, list[tuple[dict, dict]]] = weakref.WeakKeyDictionary()


def held(shell: Any) -> list[tuple[dict, dict]]:
    return _after_result.setdefault(shell, [])


def show_result(shell: Any, value: Any, record: Any) -> None:
    """`value` is the cell's result (what its magic returns, Out[n]): IPython's displayhook shows
    it as `record` (the run's that made it) says it was formatted then, if it does."""
    if value is None or not (isinstance(record, tuple) and len(record) == 2 and record[0] == FORMAT):
        return
    shown = next((e for e in record[1] if e[0] == "result"), None)
    if shown is not None:
        expect(shell, value, shown[1], shown[2])


def expect(shell: Any, value: Any, data: dict, metadata: dict) -> None:
    """The displayhook's next result, if it is `value`, is shown as `data`: only for this value
    and this cell (`after_cell` drops what the displayhook did not take)."""
    hook = shell.displayhook

    def compute_format_data(result: Any) -> Any:
        hook.__dict__.pop("compute_format_data", None)
        if result is value:
            return data, metadata
        return hook.compute_format_data(result)

    hook.compute_format_data = compute_format_data


def after_cell(shell: Any) -> None:
    """IPython's post_execute: the figures the cell drew (or replayed), after its Out[n]."""
    shell.displayhook.__dict__.pop("compute_format_data", None)   # a result the displayhook did not show
    waiting = held(shell)
    while waiting:
        data, metadata = waiting.pop(0)
        shell.display_pub.publish(data=data, metadata=metadata)


def replay(shell: Any, record: Any) -> bool:
    """Show a record again. False when `record` is not one (nothing was shown)."""
    if not (isinstance(record, tuple) and len(record) == 2 and record[0] == FORMAT):
        return False
    written = False     # a flush waits on the kernel's output thread: only after something written
    for event in record[1]:
        kind = event[0]
        if kind == "stream":
            stream = sys.stderr if event[1] == "stderr" else sys.stdout
            stream.write(event[2])
            written = True
        elif kind == "display":
            if written:
                sys.stdout.flush()
                sys.stderr.flush()
                written = False
            shell.display_pub.publish(data=event[1], metadata=event[2])
        elif kind == "figure":
            held(shell).append((event[1], event[2]))
        elif kind == "note":
            print(event[1], file=sys.stderr)
            written = True
    if written:
        sys.stdout.flush()
        sys.stderr.flush()
    return True
