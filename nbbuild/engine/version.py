"""Rule versions: what a rule's code is, so that a trace made by other code is not trusted.

Contract: `rule_version(fn, skip)` follows the code, not its formatting: the normalised bytecode
of the function (engine/code.py), of the user-defined functions and classes it reaches
(transitively: `__main__`, a notebook, the user's own modules, editable installs; not installed
packages or the standard library), its defaults and closure cells, and the plain global values it
reads, by value hash. Rules, builds (`skip(obj)` is true for them), modules and `os.environ` (read
by key, engine/environment.py) are never hashed as values (a rule called by a rule is a dependency
edge). Installed packages it touches are recorded with their versions (engine/distributions.py),
not hashed. The result is a `Version`: the hash, the parts it was made of (for `why`), and the
packages.

A version is asked for every known rule before every build (engine/verified.py), so it is kept
between calls while everything it was made of is still there: each name it looked up (a global,
a module's attribute, a closure cell, the function's code and defaults) still holds the very same
object, and every value it hashed is of an immutable type (numbers, text, bytes, and tuples and
frozensets of them). A rule that reads a list, an array, a frame or a class by value is versioned
again each time: such a value can change in place.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import sysconfig
import types
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from ..store.serialisation import UnserializableValue, hash_bytes, value_hash
from .code import PY_TAG, code_fingerprint, free_reads, global_names
from .distributions import installed

__all__ = ["Version", "rule_version"]

log = logging.getLogger("nbbuild")
_ENVIRONB = getattr(os, "environb", None)     # not on Windows


@dataclass(frozen=True)
class Version:
    version: str
    parts: tuple[tuple[str, str], ...]
    packages: tuple[tuple[str, str], ...]


_STDLIB = tuple(os.path.join(os.path.realpath(p), "") for p in
                {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
_user_module_cache: dict[str, tuple[bool, tuple[str, str] | None]] = {}


def _classify_module(modname: str | None) -> tuple[bool, tuple[str, str] | None]:
    """(is the user's own code, (distribution, version) when installed)."""
    if not modname or modname == "__main__":
        return True, None
    hit = _user_module_cache.get(modname)
    if hit is not None:
        return hit
    top = modname.partition(".")[0]
    if top == "nbbuild":   # the engine itself, even when installed editable, is never user code
        return False, None
    mod = sys.modules.get(modname) or sys.modules.get(top)
    path = getattr(mod, "__file__", None)
    result: tuple[bool, tuple[str, str] | None]
    if top in sys.builtin_module_names or top in sys.stdlib_module_names:
        result = (False, None)
    elif path is None:
        result = (True, None)          # made in a notebook or by exec
    elif os.path.realpath(path).startswith(_STDLIB) and "site-packages" not in path:
        result = (False, None)
    else:
        name = getattr(mod, "__name__", None)
        result = installed(top, name if isinstance(name, str) else top, path)
    _user_module_cache[modname] = result
    return result


_MISSING = object()
_IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None), range})


def _immutable(obj: Any, depth: int = 0) -> bool:
    t = type(obj)           # exact types: a subclass may hold state of its own
    if t in _IMMUTABLE:
        return True
    if (t is tuple or t is frozenset) and depth < 4:
        atoms = _IMMUTABLE       # a call only for what is not an atom: a table of numbers is checked at C speed
        return all(type(o) in atoms or _immutable(o, depth + 1) for o in obj)
    return False


# (how it was looked up: "item" of a dict, "attr" of an object, "cell" contents, "equal": an
# attribute equal to a copy; where; which key; the object found)
_Lookup = tuple[str, Any, Any, Any]


def _still(lookups: tuple[_Lookup, ...]) -> bool:
    for how, where, key, obj in lookups:
        if how == "item":
            found = where.get(key, _MISSING)
        elif how == "attr":
            found = getattr(where, key, _MISSING)
        elif how == "equal":
            if getattr(where, key, _MISSING) != obj:
                return False
            continue
        else:
            try:
                found = where.cell_contents
            except ValueError:
                found = _MISSING
        if found is not obj:
            return False
    return True


class _Versioner:
    def __init__(self, skip: Callable[[Any], bool]):
        self.skip = skip
        self.parts: dict[str, str] = {}
        self.packages: dict[str, str] = {}
        self.seen: set[int] = set()
        self.lookups: list[_Lookup] = []
        self.kept = True            # whether the version may be kept (all it hashed immutable)

    def package_of(self, modname: str | None) -> bool:
        user, dist = _classify_module(modname)
        if dist:
            self.packages[dist[0]] = dist[1]
        return user

    def function(self, label: str, fn: types.FunctionType) -> None:
        if id(fn) in self.seen:
            return
        self.seen.add(id(fn))
        code = fn.__code__
        self.lookups += [("attr", fn, "__code__", code), ("attr", fn, "__defaults__", fn.__defaults__),
                         ("attr", fn, "__kwdefaults__", fn.__kwdefaults__)]
        self.parts[label] = code_fingerprint(code)
        if fn.__defaults__:
            self.value(f"{label}:defaults", fn.__defaults__)
        if fn.__kwdefaults__:
            kept = self.kept
            self.value(f"{label}:kwdefaults", fn.__kwdefaults__)
            if kept and all(_immutable(v) for v in fn.__kwdefaults__.values()):
                # a dict, but of a function's own: kept while it holds what it held
                self.kept = True
                self.lookups.append(("equal", fn, "__kwdefaults__", dict(fn.__kwdefaults__)))
        reads = free_reads(code)
        for var, cell in zip(code.co_freevars, fn.__closure__ or ()):
            if var not in reads:
                continue
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell: the variable is not bound yet
                self.lookups.append(("cell", cell, None, _MISSING))
                continue
            self.lookups.append(("cell", cell, None, contents))
            self.reach(f"{label}:{var}", contents)
        g = fn.__globals__
        for chain in global_names(code):
            self.lookups.append(("item", g, chain[0], g.get(chain[0], _MISSING)))
            if chain[0] in g:
                self.reach_chain(g, chain)

    def reach_chain(self, g: dict, chain: tuple[str, ...]) -> None:
        obj = g[chain[0]]
        name = chain[0]
        for attr in chain[1:]:
            if not isinstance(obj, types.ModuleType):
                break
            nxt = getattr(obj, attr, None)
            self.lookups.append(("attr", obj, attr, _MISSING if nxt is None else nxt))
            if nxt is None:
                break
            obj, name = nxt, f"{name}.{attr}"
        self.reach(name, obj)

    def reach(self, name: str, obj: Any) -> None:
        if self.skip(obj) or obj is os.environ or obj is _ENVIRONB:
            # the environment is an input by key, recorded as the body reads it (environment.py):
            # by value here, any variable would make every rule that reads one stale
            return
        if isinstance(obj, types.ModuleType):
            self.package_of(obj.__name__)
        elif isinstance(obj, types.FunctionType):
            if self.package_of(obj.__module__):
                self.function(f"fn:{name}", obj)
        elif isinstance(obj, type):
            if self.package_of(obj.__module__):
                self.cls(f"cls:{name}", obj)
        elif isinstance(obj, (types.MethodType, functools.partial)):
            target = getattr(obj, "__func__", None) or getattr(obj, "func", None)
            self.reach(name, target)
            if isinstance(obj, functools.partial):
                self.value(f"global:{name}:args", (obj.args, obj.keywords))
        elif callable(obj) and not self.package_of(
                getattr(obj, "__module__", None) or type(obj).__module__):
            pass  # a builtin, or a callable of an installed package (np.sum, a ufunc): its version is recorded
        else:
            self.value(f"global:{name}", obj)

    def cls(self, label: str, cls: type) -> None:
        if id(cls) in self.seen:
            return
        self.seen.add(id(cls))
        self.kept = False           # its attributes may be set again at any time
        for base in cls.__bases__:
            if base is not object and self.package_of(base.__module__):
                self.cls(f"cls:{base.__qualname__}", base)
        for attr, member in sorted(vars(cls).items()):
            if attr in ("__dict__", "__weakref__", "__module__", "__qualname__", "__doc__"):
                continue
            for fn in (member, getattr(member, "__func__", None), getattr(member, "fget", None),
                       getattr(member, "fset", None)):
                if isinstance(fn, types.FunctionType):
                    self.function(f"{label}.{attr}", fn)
                    break
            else:
                if not callable(member):
                    self.value(f"{label}.{attr}", member)

    def value(self, label: str, obj: Any) -> None:
        if self.kept and not _immutable(obj):
            self.kept = False
        try:
            self.parts[label] = value_hash(obj)
        except UnserializableValue:
            # nothing process-specific may enter a version: fall back to the type
            log.debug("%s: %s cannot be hashed by value; only its type counts", label, type(obj).__name__)
            self.parts[label] = "type:" + type(obj).__qualname__


# function -> (who skips what: the engine context, the lookups it was made of, the version)
_kept: weakref.WeakKeyDictionary[Any, tuple[Any, tuple[_Lookup, ...], Version]] = weakref.WeakKeyDictionary()


def rule_version(fn: Callable, skip: Callable[[Any], bool]) -> Version:
    """The version of a rule's function. `skip(obj)` is true for rules and builds."""
    skipper = getattr(skip, "__self__", skip)
    try:
        found = _kept.get(fn)
    except TypeError:       # a callable that cannot be weakly referenced or hashed: never kept
        found = None
    if found is not None and found[0] is skipper and _still(found[1]):
        return found[2]
    v = _Versioner(skip)
    target = fn
    while isinstance(target, functools.partial):
        v.value("partial", (target.args, target.keywords))
        target = target.func
    if isinstance(target, types.FunctionType):
        v.function("code", target)
    else:
        v.value("callable", target)
    parts = tuple(v.parts.items())
    version = hash_bytes(json.dumps([PY_TAG, parts]).encode())
    made = Version(version, parts, tuple(sorted(v.packages.items())))
    if v.kept and target is fn:
        try:
            _kept[fn] = (skipper, tuple(v.lookups), made)
        except TypeError:
            pass
    return made
