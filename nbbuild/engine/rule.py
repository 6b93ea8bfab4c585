"""Rules, tasks and rule versions.

Contract:
- A `Rule` wraps a user's function. `rule.task(*args, **kwargs)` binds the arguments to the
  function's signature (defaults applied, so `f(1)` and `f(1, 2)` with default 2 are one task) and
  returns a hashable `Task` whose `key` is `name/digest-of-canonical-arguments`, stable across
  processes. `repr(task)` reads like the call: `count('a.txt')`.
- Calling a rule inside a running rule body is a tracked fetch (the caller suspends); elsewhere it
  builds the task incrementally and returns its value.
- `rule_version(fn)` follows the code, not its formatting: the normalised bytecode of the function,
  of the user-defined functions and classes it reaches (transitively: `__main__`, a notebook, the
  user's own modules, editable installs; not installed packages or the standard library), its
  defaults and closure cells, and the plain global values it reads, by value hash. Rules, builds,
  modules and `os.environ` (read by key, environment.py) are never hashed as values (a rule
  called by a rule is a dependency edge). Installed
  packages it touches are recorded with their versions, not hashed.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import inspect
import json
import keyword
import logging
import os
import reprlib
import sys
import sysconfig
import types
from dataclasses import dataclass
from typing import Any, Callable

from ..store import serialisation
from ..errors import RuleError, UnknownTargetError
from .trace import current

__all__ = ["Rule", "Task", "Version", "rule_version", "rule_stub", "ELSEWHERE", "POLICIES"]

log = logging.getLogger("nbbuild")
POLICIES = ("persist", "memory", "none")
_PLAIN_REPR = (str, int, float, bool, type(None), bytes)
_ENVIRONB = getattr(os, "environb", None)     # not on Windows


class Task:
    """A rule applied to arguments. Equal (and hashed) by key. A task read back from a trace
    decodes its arguments only when it runs (verifying needs only the key)."""

    __slots__ = ("rule", "_args", "_kwargs", "key", "encoded", "_repr")

    def __init__(self, rule: Rule, args: tuple | None, kwargs: dict | None, key: str, encoded: str, text: str):
        self.rule = rule
        self._args = args
        self._kwargs = kwargs
        self.key = key
        self.encoded = encoded
        self._repr = text

    @property
    def args(self) -> tuple:
        if self._args is None:
            pos, kw = serialisation.decode_args(self.encoded)
            self._args, self._kwargs = tuple(pos), dict(kw)
        return self._args

    @property
    def kwargs(self) -> dict:
        if self._kwargs is None:
            self.args  # noqa: B018 - decodes both
        return self._kwargs  # type: ignore[return-value]

    def __repr__(self) -> str:
        return self._repr

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.key == self.key

    def run(self) -> Any:
        return self.rule.fn(*self.args, **self.kwargs)


def _arg_repr(value: Any) -> str:
    if type(value) in _PLAIN_REPR or isinstance(value, os.PathLike):
        return repr(value)
    return reprlib.repr(value)


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    if type(value) in _PLAIN_REPR and type(value) is type(default):
        return bool(value == default)
    return False


class Rule:
    """A user's function registered with a Build."""

    def __init__(self, fn: Callable, build: Any, name: str | None = None, policy: str = "persist",
                 executor: Any = None, timeout: float | None = None, retries: int = 0):
        if not callable(fn):
            raise RuleError(f"@rule needs a function, got {type(fn).__name__}")
        if policy not in POLICIES:
            raise RuleError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        name = name or getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise RuleError(f"rule name {name!r} is not a Python identifier; pass name='...'")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or timeout <= 0):
            raise RuleError(f"rule {name}: timeout={timeout!r}: give seconds, more than 0")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise RuleError(f"rule {name}: retries={retries!r}: give a whole number, 0 or more")
        self.fn = fn
        self.name = name
        self.policy = policy
        self.build = build
        self.executor = executor      # None: the Build's (threads, processes, dask); see executors.py
        self.timeout = float(timeout) if timeout is not None else None
        self.retries = retries
        # called here with (task, value, attachment) when a body that ran elsewhere returns
        self.received: Callable[[Any, Any, Any], None] | None = None
        try:
            self.signature = inspect.signature(fn)
        except (TypeError, ValueError):
            raise RuleError(f"rule {name}: cannot read the signature of {fn!r}") from None
        functools.update_wrapper(self, fn)
        params = list(self.signature.parameters.values())
        # positional calls of a plain signature bind without inspect (the common, hot case)
        self._plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self._defaults = [p.default for p in params]

    def __repr__(self) -> str:
        return f"<rule {self.name} policy={self.policy}>"

    def __reduce__(self) -> tuple:
        """Shipped to a worker (remote.py), a rule is its function and name: there it is a stub
        whose calls are served from the values sent with the body."""
        return rule_stub, (self.fn, self.name, self.policy)

    def task(self, *args: Any, **kwargs: Any) -> Task:
        n = len(args)
        if self._plain and not kwargs and n <= len(self._defaults) and all(
                d is not inspect.Parameter.empty for d in self._defaults[n:]):
            pos: tuple = args + tuple(self._defaults[n:])
            kw: dict = {}
            text = None
        else:
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError as e:
                raise RuleError(f"{self.name}{self.signature}: {e}") from None
            bound.apply_defaults()
            pos, kw = bound.args, bound.kwargs
            text = self._call_repr(bound)
        try:
            encoded = serialisation.encode_args((pos, kw))
        except serialisation.UnserializableValue as e:
            raise RuleError(f"{self.name}: {e}; task arguments must be picklable") from None
        key = f"{self.name}/{serialisation.hash_bytes(encoded.encode())[:20]}"
        if text is None:
            text = self._plain_repr(pos)
        return Task(self, pos, kw, key, encoded, text)

    def _plain_repr(self, pos: tuple) -> str:
        """`_call_repr` for a plain signature, without building BoundArguments."""
        shown: list[str] = []
        keyword_only = False
        for name, value, default in zip(self.signature.parameters, pos, self._defaults):
            if default is not inspect.Parameter.empty and _is_default(value, default):
                keyword_only = True
            elif keyword_only:
                shown.append(f"{name}={_arg_repr(value)}")
            else:
                shown.append(_arg_repr(value))
        return f"{self.name}({', '.join(shown)})"

    def accepts(self, args: tuple, kwargs: dict) -> bool:
        if self._plain and not kwargs:
            return len(args) == len(self._defaults)
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError:
            return False
        return True

    def task_from_encoded(self, key: str, encoded: str, text: str) -> Task:
        return Task(self, None, None, key, encoded, text)

    def _call_repr(self, bound: inspect.BoundArguments) -> str:
        shown: list[str] = []
        keyword_only = False
        params = self.signature.parameters
        for name, value in bound.arguments.items():
            p = params[name]
            if p.kind is p.VAR_POSITIONAL:
                shown.extend(_arg_repr(v) for v in value)
            elif p.kind is p.VAR_KEYWORD:
                shown.extend(f"{k}={_arg_repr(v)}" for k, v in value.items())
            elif p.default is not p.empty and _is_default(value, p.default):
                keyword_only = True
            elif keyword_only or p.kind is p.KEYWORD_ONLY:
                shown.append(f"{name}={_arg_repr(value)}")
            else:
                shown.append(_arg_repr(value))
        return f"{self.name}({', '.join(shown)})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task = self.task(*args, **kwargs)
        rec = current.get()
        if rec is not None and rec.scheduler.build is self.build:
            return rec.scheduler.fetch_values(rec, [task])[0]
        return self.build.build(task)[0]

    def map(self, *iterables: Any) -> list[Any]:
        """Fetch `rule(*args)` for each argument tuple, concurrently; inside a rule, one tracked group."""
        tasks = [self.task(*a) for a in zip(*iterables)]
        rec = current.get()
        if rec is not None and rec.scheduler.build is self.build:
            return rec.scheduler.fetch_values(rec, tasks)
        return self.build.build(*tasks)


class _Elsewhere:
    """Stands for the Build in a worker: stub rules and the worker's recorder agree on it."""

    def __repr__(self) -> str:
        return "<the kernel's Build>"


ELSEWHERE = _Elsewhere()


def rule_stub(fn: Any, name: str, policy: str) -> Rule:
    """A Rule in a worker, made when one is unpickled there (Rule.__reduce__): the same `task()`
    (keys are identical); its calls are served by the worker's recorder (executors/worker.py)."""
    return Rule(fn, ELSEWHERE, name=name, policy=policy)


# ---------------------------------------------------------------- versions

@dataclass(frozen=True)
class Version:
    version: str
    parts: tuple[tuple[str, str], ...]
    packages: tuple[tuple[str, str], ...]


_STDLIB = tuple(os.path.join(os.path.realpath(p), "") for p in
                {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
_user_module_cache: dict[str, tuple[bool, tuple[str, str] | None]] = {}
_dists: dict[str, list[str]] | None = None


def _distribution(top: str) -> md.Distribution | None:
    global _dists
    try:
        return md.distribution(top)   # the usual case, and far cheaper than the full mapping
    except md.PackageNotFoundError:
        pass
    if _dists is None:
        _dists = md.packages_distributions()
    for name in _dists.get(top, ()):
        try:
            return md.distribution(name)
        except md.PackageNotFoundError:
            continue
    return None


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
        dist = _distribution(top)
        if dist is None:
            result = ("site-packages" not in path and "dist-packages" not in path, None)
        else:
            editable = False
            try:
                direct = json.loads(dist.read_text("direct_url.json") or "{}")
                editable = bool(direct.get("dir_info", {}).get("editable"))
            except (ValueError, OSError):
                pass
            result = (editable, (dist.metadata["Name"], dist.version))
    _user_module_cache[modname] = result
    return result


class _Versioner:
    def __init__(self, skip: Callable[[Any], bool]):
        self.skip = skip
        self.parts: dict[str, str] = {}
        self.packages: dict[str, str] = {}
        self.seen: set[int] = set()

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
        self.parts[label] = serialisation.code_fingerprint(code)
        if fn.__defaults__:
            self.value(f"{label}:defaults", fn.__defaults__)
        if fn.__kwdefaults__:
            self.value(f"{label}:kwdefaults", fn.__kwdefaults__)
        reads = serialisation.free_reads(code)
        for var, cell in zip(code.co_freevars, fn.__closure__ or ()):
            if var not in reads:
                continue
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell: the variable is not bound yet
                continue
            self.reach(f"{label}:{var}", contents)
        g = fn.__globals__
        for chain in serialisation.global_names(code):
            if chain[0] in g:
                self.reach_chain(g, chain)

    def reach_chain(self, g: dict, chain: tuple[str, ...]) -> None:
        obj = g[chain[0]]
        name = chain[0]
        for attr in chain[1:]:
            if not isinstance(obj, types.ModuleType):
                break
            nxt = getattr(obj, attr, None)
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
        try:
            self.parts[label] = serialisation.value_hash(obj)
        except serialisation.UnserializableValue:
            # nothing process-specific may enter a version: fall back to the type
            log.debug("%s: %s cannot be hashed by value; only its type counts", label, type(obj).__name__)
            self.parts[label] = "type:" + type(obj).__qualname__


def rule_version(fn: Callable, skip: Callable[[Any], bool]) -> Version:
    """The version of a rule's function. `skip(obj)` is true for rules and builds."""
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
    version = serialisation.hash_bytes(json.dumps([serialisation.PY_TAG, parts]).encode())
    return Version(version, parts, tuple(sorted(v.packages.items())))


def resolve_target(rules: dict[str, Rule], name: str) -> Rule:
    try:
        return rules[name]
    except KeyError:
        known = ", ".join(sorted(rules)) or "none yet"
        raise UnknownTargetError(f"no rule named {name!r} (rules: {known})") from None
