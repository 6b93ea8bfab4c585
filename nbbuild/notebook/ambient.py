"""Library settings a rule cell changes, which plain execution carries to later cells without a name.

matplotlib's rcParams are process-wide: `plt.rcParams["lines.linewidth"] = 3`, `plt.style.use(...)`
or `mpl.rc(...)` in one cell changes how every later cell draws. A reused cell must leave them as
running it would have, or after a restart the later cells draw with the defaults.

Contract:
- `Settings()`: `start()` before a body, `finish()` after it: the rcParams entries the body changed,
  `{key: value}` (picklable), or `{}` when it changed none or matplotlib was not imported by then.
  A body that imports matplotlib is compared with the settings matplotlib loads at import
  (`rcParamsOrig`), so `import matplotlib.pyplot as plt; plt.style.use("ggplot")` counts.
  `backend` is never recorded: the front end chooses it.
- `restore(changed)`: sets those entries again (a reused cell's, after its body would have run).
- `Imports(modules)`: the modules a cell bound (`{name: module name}`, in the order it imported
  them), stored first among its outputs. Loading it imports them, so a reused cell's imports run
  before its other values are loaded (a Figure's loading imports matplotlib.axes) and in the
  cell's order: importing registers things a later cell sees, matplotlib.dates' unit converters
  in `matplotlib.units.registry` among them. It pickles to the same bytes however often loaded.
- Only what changed is kept, so a reused cell leaves every other setting as the cells before it
  left it. The settings are not an input: a later cell is not run again because they changed (what
  it prints is the same; its figures are drawn again only when it runs).
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["Imports", "Settings", "restore"]

_SKIP = frozenset({"backend", "backend_fallback"})


def _params() -> dict[str, Any] | None:
    mpl = sys.modules.get("matplotlib")
    rc = getattr(mpl, "rcParams", None)
    if rc is None:
        return None
    return dict(dict.items(rc))          # the stored values, without resolving the backend


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an object whose == is not a bool (an array): compare as text
        return repr(a) == repr(b)


class Settings:
    def __init__(self) -> None:
        self.before: dict[str, Any] | None = None

    def start(self) -> None:
        self.before = _params()

    def finish(self) -> dict[str, Any]:
        now = _params()
        if now is None:
            return {}
        before = self.before
        if before is None:
            before = dict(dict.items(getattr(sys.modules["matplotlib"], "rcParamsOrig", {})))
        return {k: v for k, v in now.items() if k not in _SKIP and not _same(v, before.get(k))}


def restore(changed: dict[str, Any]) -> None:
    mpl = sys.modules.get("matplotlib")
    if not changed:
        return
    if mpl is None:
        import matplotlib as mpl
    try:
        mpl.rcParams.update(changed)
    except Exception:  # a value this matplotlib refuses (another version): leave its own
        for k, v in changed.items():
            try:
                mpl.rcParams[k] = v
            except Exception:
                pass


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
