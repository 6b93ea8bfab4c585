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

A pickle names a class or function by reference as (module, name): a user's value may hold
nbbuild's own objects that way (a function of the notebook that calls a rule holds the Rule, which
pickles as `rule_stub`). nbbuild's modules have moved since such pickles were written: `MOVED`
maps each module path nbbuild had to where its names are now (and `RENAMED` the few names that
changed), so a pickle written by an older nbbuild loads as it did.

Contract:
- `dump(value, buffers)` -> the pickle stream (protocol 5; out-of-band buffers appended to
  `buffers` when it is a list).
- `loads(meta, buffers)` -> the value; `loads_noting(meta, buffers)` -> (the value, whether it
  holds classes pickled by value).
- `loads_plain(data)` -> what `pickle.loads(data)` gives, with nbbuild's old module paths
  resolved through `MOVED` as well (cloudpickle's functions load as cloudpickle alone loads them).
The stored bytes do not depend on the loading side: values stored before load the same way.
"""
from __future__ import annotations

import importlib
import io
import pickle
import sys
import types
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cp

__all__ = ["dump", "loads", "loads_plain", "moved", "MOVED", "RENAMED"]

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


# nbbuild's module paths before its layout in subpackages -> where their names are now (in order
# of lookup). A path that names a package now (`nbbuild.store`) is looked up here first: its
# names are in the modules listed, not in the package.
MOVED: dict[str, tuple[str, ...]] = {
    "nbbuild.trace": ("nbbuild.engine.trace",),
    "nbbuild.clean": ("nbbuild.engine.verified",),
    "nbbuild.body": ("nbbuild.engine.body",),
    "nbbuild.scheduler": ("nbbuild.engine.scheduler", "nbbuild.engine.state"),
    "nbbuild.priority": ("nbbuild.engine.priority",),
    "nbbuild.files": ("nbbuild.engine.files",),
    "nbbuild.explain": ("nbbuild.engine.explain",),
    "nbbuild.rule": ("nbbuild.engine.rule", "nbbuild.engine.task", "nbbuild.engine.version"),
    "nbbuild.inputs": ("nbbuild.engine.inputs",),
    "nbbuild.environment": ("nbbuild.engine.environment",),
    "nbbuild.randomness": ("nbbuild.engine.randomness",),
    "nbbuild.outputs": ("nbbuild.engine.outputs",),
    "nbbuild.hashing": ("nbbuild.store.serialisation", "nbbuild.engine.arguments", "nbbuild.engine.code"),
    "nbbuild.pickling": ("nbbuild.store.pickling",),
    "nbbuild.store": ("nbbuild.store.store", "nbbuild.store.values"),
    "nbbuild.table": ("nbbuild.store.table",),
    "nbbuild.index": ("nbbuild.store.index",),
    "nbbuild.valuefile": ("nbbuild.store.valuefile",),
    "nbbuild.signing": ("nbbuild.store.signing",),
    "nbbuild.foreign": ("nbbuild.store.foreign",),
    "nbbuild.eviction": ("nbbuild.store.eviction",),
    "nbbuild.memory": ("nbbuild.store.memory",),
    "nbbuild.executors": ("nbbuild.executors.hubs", "nbbuild.executors.pools"),
    "nbbuild.remote": ("nbbuild.executors.worker", "nbbuild.executors.kernel", "nbbuild.engine.rule"),
    "nbbuild.report": ("nbbuild.report.report",),
    "nbbuild.progress": ("nbbuild.report.progress",),
    "nbbuild.metrics": ("nbbuild.report.metrics",),
    "nbbuild.console": ("nbbuild.report.console",),
}


# names that changed with the move: (old module, old name) -> (module, name) now
RENAMED: dict[tuple[str, str], tuple[str, str]] = {
    ("nbbuild.remote", "RemoteError"): ("nbbuild.executors.worker", "WorkerError"),
    ("nbbuild.remote", "_RemoteRecorder"): ("nbbuild.executors.worker", "_WorkerRecorder"),
    ("nbbuild.hashing", "_canonical"): ("nbbuild.store.serialisation", "canonical"),
    ("nbbuild.hashing", "_dump"): ("nbbuild.store.serialisation", "dump"),
    ("nbbuild.store", "_size"): ("nbbuild.report.formatting", "size_text"),
    ("nbbuild.trace", "match"): ("nbbuild.engine.rebuild", "match"),
    ("nbbuild.explain", "_why_trace"): ("nbbuild.engine.explain", "_group"),   # a trace is walked by rebuild.walk
    ("nbbuild.rule", "_distribution"): ("nbbuild.engine.distributions", "owner"),
}


def moved(module: str, name: str) -> Any:
    """The object an old pickle names as `module.name`, where it is now; None if `module` is not
    one of nbbuild's old paths or none of its new modules has `name`."""
    module, name = RENAMED.get((module, name), (module, name))
    if module not in MOVED:
        return getattr(importlib.import_module(module), name, None)
    for new in MOVED.get(module, ()):
        found = getattr(importlib.import_module(new), name.partition(".")[0], None)
        if found is not None:
            for part in name.split(".")[1:]:      # a nested qualified name (protocol 4+)
                found = getattr(found, part)
            return found
    return None


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in MOVED:
            found = moved(module, name)
            if found is not None:
                return found
        return super().find_class(module, name)


class _Unpickler(_PlainUnpickler):
    by_value = False        # whether the pickle makes classes anew (cloudpickle's skeletons)

    def find_class(self, module: str, name: str) -> Any:
        if module in _CLOUDPICKLE_MODULES:
            # a class made anew is tracked by cloudpickle: a second load reuses the first's
            # (functions by value are not: they load as what they were, and get __main__'s globals)
            self.by_value = self.by_value or "skeleton" in name or name == "_class_setstate"
            if name in _OURS:
                return _OURS[name]
        return super().find_class(module, name)


def loads(meta: bytes | memoryview, buffers: Any = ()) -> Any:
    return _Unpickler(io.BytesIO(meta), buffers=buffers).load()


def loads_noting(meta: bytes | memoryview, buffers: Any = ()) -> tuple[Any, bool]:
    """(the value, whether it holds classes pickled by value: two loads of such a value in one
    process may pickle to different bytes, cloudpickle handing the second the classes the first
    one made, by their tracker id)."""
    u = _Unpickler(io.BytesIO(meta), buffers=buffers)
    value = u.load()
    return value, u.by_value


def loads_plain(data: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()
