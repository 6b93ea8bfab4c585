"""Library settings a rule cell changes, which plain execution carries to later cells without a name.

`plt.rcParams[...] = 3`, `pd.set_option("display.max_rows", 7)`, `np.set_printoptions(precision=2)`,
`np.seterr(all="raise")`, `decimal.getcontext().prec = 5`, `warnings.filterwarnings("ignore")`,
`os.chdir(...)`, `sys.path.append("../src")`: one cell changes how every later cell runs or shows.
A reused cell must leave them as running it would have, or after a restart the later cells run
with the defaults; and a body runs in a copy of the kernel's context, so settings kept in context
variables (numpy's, decimal's) are set again in the kernel's own even when the cell ran.

Contract:
- `Settings()`: `start()` before a body, `finish()` after it: `{setting: change}` for each of
  `SETTINGS` the body changed (picklable: the rcParams, pandas options, numpy print options or
  error state, decimal context fields that differ; the warning filters or sys.path entries it
  added, at their places; the working directory or recursion limit it left), `{}` for none. A
  library the body imports is compared with its defaults (matplotlib's `rcParamsOrig`, pandas'
  registered defaults, a fresh context's numpy and decimal), so `import matplotlib.pyplot as plt;
  plt.style.use("ggplot")` counts. matplotlib's `backend` is never recorded: the front end chooses it.
- `restore(changed)`: applies them again, in this context (the kernel's, after the cell); one a
  library refuses now (another version) is left as it is; a working directory that is gone is one
  warning. The recursion limit is never lowered.
- `Imports(modules)`: the modules a cell bound (`{name: module name}`, in the order it imported
  them), stored first among its outputs. Loading it imports them, so a reused cell's imports run
  before its other values are loaded (a Figure's loading imports matplotlib.axes) and in the
  cell's order: importing registers things a later cell sees, matplotlib.dates' unit converters
  in `matplotlib.units.registry` among them. It pickles to the same bytes however often loaded.
- Only what changed is kept, so a reused cell leaves every other setting as the cells before it
  left it. The settings are not an input: a later cell is not run again because they changed (what
  it computes is the same; what it prints or draws is shown again only when it runs).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import operator
import os
import sys
import warnings
from typing import Any, Callable, cast

__all__ = ["Imports", "Settings", "restore", "SETTINGS"]

log = logging.getLogger("nbbuild")

_SKIP = frozenset({"backend", "backend_fallback"})
_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an object whose == is not a bool (an array): compare as text
        return repr(a) == repr(b)


def _changed(before: dict, now: dict, skip: frozenset = frozenset()) -> dict:
    # almost always every value is the very object read before: told apart in C, at once
    if len(before) == len(now) and all(map(operator.is_, before.values(), now.values())):
        return {}
    return {k: v for k, v in now.items()
            if (b := before.get(k, _MISSING)) is not v and k not in skip and not _same(v, b)}


def _fresh(read: Callable[[], Any]) -> Any:
    """What `read` gives in a context no cell has touched: a setting kept in a context variable
    (numpy's print options and error state, decimal's context) at its default."""
    return contextvars.Context().run(read)


class _Setting:
    """One library's settings: `read()` them (None when the library is not imported), the
    defaults a body that imports it starts from, what changed between two reads (picklable,
    None for nothing), and `apply` that change in this context."""
    module = ""

    def loaded(self) -> bool:
        return self.module in sys.modules

    def read(self) -> Any:
        raise NotImplementedError

    def defaults(self) -> Any:
        return self.read()

    def diff(self, before: Any, now: Any) -> Any:
        return _changed(before, now) or None

    def apply(self, change: Any) -> None:
        raise NotImplementedError


class _RcParams(_Setting):
    module = "matplotlib"

    def read(self) -> dict:
        return dict(dict.items(sys.modules["matplotlib"].rcParams))   # stored values, the backend unresolved

    def defaults(self) -> dict:
        return dict(dict.items(getattr(sys.modules["matplotlib"], "rcParamsOrig", {})))

    def diff(self, before: dict, now: dict) -> Any:
        return _changed(before, now, _SKIP) or None

    def apply(self, change: dict) -> None:
        import matplotlib as mpl
        try:
            mpl.rcParams.update(change)
        except Exception:  # a value this matplotlib refuses (another version): leave its own
            for k, v in change.items():
                with contextlib.suppress(Exception):
                    mpl.rcParams[k] = v


class _PandasOptions(_Setting):
    """Read as a shallow copy of each of pandas' nested option dicts (fast, in C); flattened to
    `{"display.max_rows": 7}` only where one changed."""
    module = "pandas"

    def __init__(self) -> None:
        self.tables: tuple[int, list[tuple[str, dict]]] = (-1, [])

    def read(self) -> list[tuple[str, dict]]:
        from pandas._config import config
        return [(prefix, dict(d)) for prefix, d in self._tables(config)]

    def _tables(self, config: Any) -> list[tuple[str, dict]]:
        """The nested dicts options live in, found once (again when an option is registered)."""
        if self.tables[0] != len(config._registered_options):
            found, stack = [], [("", config._global_config)]
            while stack:
                prefix, d = stack.pop()
                found.append((prefix, d))
                stack += [(prefix + k + ".", v) for k, v in d.items() if isinstance(v, dict)]
            self.tables = (len(config._registered_options), found)
        return self.tables[1]

    def defaults(self) -> dict:
        from pandas._config import config
        return {k: o.defval for k, o in config._registered_options.items()}

    def diff(self, before: Any, now: list[tuple[str, dict]]) -> Any:
        if isinstance(before, dict):         # the defaults, flat
            flat = {prefix + k: v for prefix, d in now for k, v in d.items() if not isinstance(v, dict)}
            return _changed(before, flat) or None
        was = dict(before)
        changed: dict[str, Any] = {}
        for prefix, d in now:
            for k, v in _changed(was.get(prefix, {}), d).items():
                if not isinstance(v, dict):
                    changed[prefix + k] = v
        return changed or None

    def apply(self, change: dict) -> None:
        import pandas as pd
        for k, v in change.items():
            with contextlib.suppress(Exception):     # an option this pandas does not have
                pd.set_option(k, v)


class _Numpy(_Setting):
    """numpy's settings read by one function and set by another (`get_printoptions` and
    `set_printoptions`, `geterr` and `seterr`), kept in a context variable."""
    module = "numpy"

    def __init__(self, get: str, put: str) -> None:
        self.get, self.put = get, put

    def read(self) -> dict:
        return dict(getattr(sys.modules["numpy"], self.get)())

    def defaults(self) -> dict:
        return dict(_fresh(getattr(sys.modules["numpy"], self.get)))

    def apply(self, change: dict) -> None:
        import numpy as np
        with contextlib.suppress(Exception):
            getattr(np, self.put)(**change)


class _Decimal(_Setting):
    module = "decimal"
    _FIELDS = ("prec", "rounding", "Emin", "Emax", "capitals", "clamp")

    def read(self) -> dict:
        ctx = sys.modules["decimal"].getcontext()
        out = {f: getattr(ctx, f) for f in self._FIELDS}
        out["traps"] = tuple(sorted(t.__name__ for t, on in ctx.traps.items() if on))
        return out

    def defaults(self) -> dict:
        return _fresh(self.read)

    def apply(self, change: dict) -> None:
        import decimal
        ctx = decimal.getcontext()
        for f, v in change.items():
            if f == "traps":
                for t in list(ctx.traps):
                    ctx.traps[t] = t.__name__ in v
            else:
                with contextlib.suppress(Exception):
                    setattr(ctx, f, v)


class _WarningFilters(_Setting):
    """`warnings.filterwarnings("ignore")` in a first cell: the filters it added, put back in front."""
    module = "warnings"

    def read(self) -> list:
        return list(warnings.filters)

    def diff(self, before: list, now: list) -> Any:
        added = [f for f in now if f not in before]
        return added or None

    def apply(self, change: list) -> None:
        filters = cast(list, warnings.filters)     # typeshed says a Sequence: it is the module's list
        for f in reversed(change):
            if f not in filters:
                filters.insert(0, f)
        getattr(warnings, "_filters_mutated", lambda: None)()


class _Cwd(_Setting):
    module = "os"

    def read(self) -> str:
        return os.getcwd()

    def diff(self, before: str, now: str) -> Any:
        return now if now != before else None

    def apply(self, change: str) -> None:
        try:
            os.chdir(change)
        except OSError as e:
            log.warning("nbbuild: a reused cell changed the working directory to %s, which is not there now "
                        "(%s); staying in %s", change, e.strerror or e, os.getcwd())


class _SysPath(_Setting):
    """`sys.path.append("../src")`: the entries added, at their places."""
    module = "sys"

    def read(self) -> list:
        return list(sys.path)

    def diff(self, before: list, now: list) -> Any:
        added = [(i, p) for i, p in enumerate(now) if p not in before]
        return added or None

    def apply(self, change: list) -> None:
        for i, p in change:
            if p not in sys.path:
                sys.path.insert(min(i, len(sys.path)), p)


class _RecursionLimit(_Setting):
    module = "sys"

    def read(self) -> int:
        return sys.getrecursionlimit()

    def diff(self, before: int, now: int) -> Any:
        return now if now != before else None

    def apply(self, change: int) -> None:
        if change > sys.getrecursionlimit():       # never lowered under what runs now
            sys.setrecursionlimit(change)


SETTINGS: dict[str, _Setting] = {
    "matplotlib.rcParams": _RcParams(), "pandas.options": _PandasOptions(), "numpy.printoptions": _Numpy("get_printoptions", "set_printoptions"),
    "numpy.errstate": _Numpy("geterr", "seterr"), "decimal.context": _Decimal(), "warnings.filters": _WarningFilters(),
    "os.getcwd": _Cwd(), "sys.path": _SysPath(), "sys.recursionlimit": _RecursionLimit(),
}


class Settings:
    def __init__(self) -> None:
        self.before: dict[str, Any] = {}

    def start(self) -> None:
        self.before = {}
        for name, s in SETTINGS.items():
            if s.loaded():
                with contextlib.suppress(Exception):   # a library's internals moved: not followed
                    self.before[name] = s.read()

    def finish(self) -> dict[str, Any]:
        changed: dict[str, Any] = {}
        for name, s in SETTINGS.items():
            if not s.loaded():
                continue
            try:
                before = self.before[name] if name in self.before else s.defaults()
                change = s.diff(before, s.read())
            except Exception:  # a library's internals moved: not followed
                continue
            if change is not None:
                changed[name] = change
        return changed


def restore(changed: dict[str, Any]) -> None:
    if changed and not set(changed) <= set(SETTINGS):     # stored before settings were by library
        changed = {"matplotlib.rcParams": changed}
    for name, change in changed.items():
        try:
            SETTINGS[name].apply(change)
        except Exception:  # a library gone or changed since: its settings stay as they are
            log.debug("nbbuild: could not set %s again", name, exc_info=True)


class Imports(dict):
    def __reduce__(self) -> tuple:
        return _imported, (dict(self),)


def _imported(modules: dict[str, str]) -> Imports:
    for module in modules.values():
        try:
            importlib.import_module(module)
        except Exception:  # gone from this environment: binding the name says so, as running would
            pass
    return Imports(modules)
