"""Names a function defined in a rule cell reads from its own cell, kept as plain execution's globals.

A rule cell's body is a function: a `def` in it that reads a name the cell binds (`scale = 2` beside
`def f(x): return x * scale`) closes over that name, where plain execution would read the global
`scale` each time `f` is called, and so see a later cell's `scale = 3`. The function cannot simply
read the global: the cell's names are bound in the namespace only after its body, and the body
may call it first.

Contract:
- `Closures.register(values)`: each function among `values` (and each method of a class among
  them) that a notebook cell defined at its top level (`__module__` "__main__", no `<locals>` in its
  qualified name: a library's or a factory's closure is left alone) is followed by the names it
  closes over. Held weakly: a function nobody holds is forgotten.
- `Closures.bound(values)`: the namespace binds these names now (a cell ran, or was reused): the
  functions following one of them read the new value from now on, as they would the global; it
  returns those it changed. `holders(namespace, changed)`: the names holding them (or a class of
  theirs): changed in place, they are new versions of those names (read by value from now on, so
  a cell that calls one is run again when what it reads changed).
"""
from __future__ import annotations

import types
import weakref
from typing import Any, TypeGuard

__all__ = ["Closures"]


def _defined_here(fn: Any) -> TypeGuard[types.FunctionType]:
    return (isinstance(fn, types.FunctionType) and fn.__closure__ is not None
            and getattr(fn, "__module__", None) == "__main__" and "<locals>" not in fn.__qualname__)


def _functions(value: Any) -> list[types.FunctionType]:
    if _defined_here(value):
        return [value]
    if isinstance(value, type) and value.__module__ == "__main__":
        found = []
        for member in vars(value).values():
            for fn in (member, getattr(member, "__func__", None), getattr(member, "fget", None)):
                if _defined_here(fn):
                    found.append(fn)
        return found
    return []


class Closures:
    def __init__(self) -> None:
        self.readers: dict[str, weakref.WeakSet] = {}

    def register(self, values: dict[str, Any]) -> None:
        for value in values.values():
            for fn in _functions(value):
                for name in fn.__code__.co_freevars:
                    self.readers.setdefault(name, weakref.WeakSet()).add(fn)

    def bound(self, values: dict[str, Any]) -> set[types.FunctionType]:
        changed = set()
        for name, value in values.items():
            for fn in list(self.readers.get(name, ())):
                cell = fn.__closure__[fn.__code__.co_freevars.index(name)]
                try:
                    if cell.cell_contents is value:
                        continue
                except ValueError:    # an empty cell: the name was not bound when the body ended
                    pass
                cell.cell_contents = value
                changed.add(fn)
        return changed

    @staticmethod
    def holders(namespace: dict, changed: set[types.FunctionType]) -> list[str]:
        """The names in `namespace` holding one of these functions, or a class with one."""
        return [n for n, v in namespace.items()
                if (isinstance(v, types.FunctionType) or isinstance(v, type)) and any(f in changed for f in _functions(v))]
