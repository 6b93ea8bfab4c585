"""How values are pickled and unpickled: cloudpickle, with what plain execution gives kept.

cloudpickle pickles the functions and classes of `__main__` (a notebook, a script) by value. As it
stands, it loses two things plain execution has:
- a function of `__main__` reads its globals when called, from `__main__`'s namespace: the
  notebook's current `threshold`, a function a later cell defines, itself when it recurses.
  cloudpickle loads it with a new dict of its own, holding copies of the globals it read when it
  was pickled. Here, a function pickled from `__main__`'s namespace is loaded with `__main__`'s
  namespace (the notebook's, in a kernel: IPython makes its user namespace `__main__`'s) as its
  globals, and nothing of the stored copies is written into it: a name the notebook has not
  bound (yet) is a NameError when called, as plainly. Methods, lambdas, functions in containers
  or held by other objects are all loaded through the same two calls, so all are covered;
  functions of other modules (pickled by reference) are not concerned.
- a class keeps its `__qualname__` (`Model.Config`, `make.<locals>.Local`): it is not in the
  class's `__dict__`, which is what cloudpickle keeps, so it is added to the pickled state.

Contract:
- `dump(value, buffers)` -> the pickle stream (protocol 5; out-of-band buffers appended to
  `buffers` when it is a list).
- `loads(meta, buffers)` -> the value.
The stored bytes do not depend on the loading side: values stored before load the same way.
"""
from __future__ import annotations

import io
import pickle
import sys
import types
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cp

__all__ = ["dump", "loads"]

_CLOUDPICKLE_MODULES = ("cloudpickle.cloudpickle", "cloudpickle.cloudpickle_fast")
# cloudpickle's own (private) names: should a version rename them, values pickle and load as
# cloudpickle alone does
_SKELETONS = tuple(f for f in (getattr(_cp, "_make_skeleton_class", None), getattr(_cp, "_make_skeleton_enum", None))
                   if f is not None)


class _Pickler(cloudpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        reduced = super().reducer_override(obj)
        if (isinstance(obj, type) and isinstance(reduced, tuple) and reduced[0] in _SKELETONS
                and obj.__qualname__ != obj.__name__):
            (clsdict, slots) = reduced[2]
            # _class_setstate sets every entry of the state on the class: the qualified name too
            # ("".join: a copy, not the interned string, as cloudpickle does for determinism)
            clsdict["__qualname__"] = "".join(obj.__qualname__)
            reduced = reduced[:2] + ((clsdict, slots),) + reduced[3:]
        return reduced


def dump(value: Any, buffers: list | None = None) -> bytes:
    f = io.BytesIO()
    _Pickler(f, protocol=5, buffer_callback=None if buffers is None else buffers.append).dump(value)
    return f.getvalue()


def _main_namespace(pickled: dict) -> dict | None:
    """`__main__`'s namespace, for a function pickled from it (its globals were `__main__`'s)."""
    if pickled.get("__name__") != "__main__":
        return None
    main = sys.modules.get("__main__")
    return getattr(main, "__dict__", None)


def _make_function(code: types.CodeType, pickled: dict, name: str, argdefs: Any, closure: Any) -> Any:
    namespace = _main_namespace(pickled)
    if namespace is None:
        return _cp._make_function(code, pickled, name, argdefs, closure)
    return types.FunctionType(code, namespace, name, argdefs, closure)


def _function_setstate(fn: Any, state: tuple) -> Any:
    """cloudpickle's, but for a function of `__main__`: its globals are the namespace itself, so
    the copies pickled with it are not written into it (nor is its `__builtins__` replaced)."""
    main = sys.modules.get("__main__")
    if main is None or fn.__globals__ is not getattr(main, "__dict__", None):
        return _cp._function_setstate(fn, state)
    attributes, slots = state
    fn.__dict__.update(attributes)
    slots = {k: v for k, v in slots.items() if k not in ("__globals__", "_cloudpickle_submodules")}
    closure = slots.pop("__closure__")
    for i, cell in enumerate(closure or ()):
        try:
            fn.__closure__[i].cell_contents = cell.cell_contents
        except ValueError:  # an empty cell: the variable was not bound when pickled
            continue
    for k, v in slots.items():
        setattr(fn, k, v)
    return fn


_OURS = {"_make_function": _make_function, "_function_setstate": _function_setstate}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _CLOUDPICKLE_MODULES and name in _OURS:
            return _OURS[name]
        return super().find_class(module, name)


def loads(meta: bytes | memoryview, buffers: Any = ()) -> Any:
    return _Unpickler(io.BytesIO(meta), buffers=buffers).load()
