"""The global random generators as inputs and outputs of a rule body.

Plain execution threads the state of `random`'s and `numpy.random`'s global generators from cell
to cell without a name: a cell that draws (or seeds) reads the state the cells before it left, and
leaves another. A reused cell must leave the generators where running it would have, and a cell
that draws must run again when the state it starts from is not the one it started from before.

Contract:
- Keys: `RNG_PREFIX + "random"` and `RNG_PREFIX + "numpy"` (numpy's legacy global RandomState,
  what `np.random.rand` and `np.random.seed` use; only when numpy is imported).
- `digest(key)`: a hash of that generator's state now; `describe(key)` says it changed in words.
- `Draws()`: `start()` takes the states before a body runs, `finish()` after it:
  (inputs, outputs). Inputs: for each generator the body moved, the hash of its state before, but
  for one the body seeded before it drew (its end state does not depend on where it started).
  Outputs: the states the body left, by key (plain Python tuples, picklable).
- `restore(states)`: sets the generators to states `finish()` gave (a reused cell's).
- A generator other threads share (a Dask client, an event loop) may move while a body runs
  without the body drawing. `install()` wraps the module functions of both generators
  (`random.random`, `np.random.rand`, `random.seed`, ... : those bound to the global generator)
  to note who draws: the body (in its context) or anyone else. A generator that moved counts as
  the body's when the body drew or seeded through them, or when nobody else drew through them
  meanwhile (a library that draws from the generator object directly, as scikit-learn's
  `check_random_state(None)` does, is then still the body's). Outside a body they work as before.
"""
from __future__ import annotations

import contextvars
import pickle
import random
import sys
from typing import Any

from ..store.serialisation import hash_bytes

__all__ = ["RNG_PREFIX", "Draws", "digest", "describe", "restore", "install"]

RNG_PREFIX = "@rng:"
_NAMES = {"random": "random's global generator", "numpy": "numpy.random's global generator"}


def _numpy_random() -> Any:
    np = sys.modules.get("numpy")
    return getattr(np, "random", None) if np is not None else None


def _state(name: str) -> Any:
    if name == "random":
        return random.getstate()
    nr = _numpy_random()
    return nr.get_state(legacy=True) if nr is not None else None


def _hash(state: Any) -> str:
    if state is None:
        return "-"
    if isinstance(state, tuple) and len(state) == 5 and hasattr(state[1], "tobytes"):   # numpy's
        head = pickle.dumps((state[0], int(state[2]), int(state[3]), float(state[4])))
        return hash_bytes(b"rng", head, state[1].tobytes())
    return hash_bytes(b"rng", pickle.dumps(state, protocol=4))


def digest(key: str) -> str:
    return _hash(_state(key[len(RNG_PREFIX):]))


def describe(key: str) -> str:
    name = key[len(RNG_PREFIX):]
    return f"the state of {_NAMES.get(name, name)} changed (a cell before it drew or seeded)"


def restore(states: dict[str, Any]) -> None:
    for key, state in states.items():
        name = key[len(RNG_PREFIX):]
        if name == "random":
            random.setstate(state)
        elif name == "numpy" and (nr := _numpy_random()) is not None:
            nr.set_state(state)


_watching: contextvars.ContextVar[Draws | None] = contextvars.ContextVar("nbbuild_draws", default=None)
_elsewhere = {"random": 0, "numpy": 0}     # draws through the module functions outside any body


class Draws:
    def __init__(self) -> None:
        self.before: dict[str, str] = {}
        self.seeded: dict[str, str] = {}     # generator -> its state's hash when first seeded
        self.drew: set[str] = set()
        self.others: dict[str, int] = {}
        self._token: contextvars.Token | None = None

    def start(self) -> None:
        install()
        self.before = {n: _hash(_state(n)) for n in _NAMES}
        self.others = dict(_elsewhere)
        self._token = _watching.set(self)

    def finish(self) -> tuple[dict[str, str], dict[str, Any]]:
        if self._token is not None:
            _watching.reset(self._token)
            self._token = None
        inputs, outputs = {}, {}
        for name, before in self.before.items():
            state = _state(name)
            # seeding where the state already was moves nothing, yet a reused cell must seed too
            if state is None or (_hash(state) == before and name not in self.seeded):
                continue
            ours = name in self.drew or name in self.seeded or _elsewhere[name] == self.others.get(name)
            if not ours:
                continue
            outputs[RNG_PREFIX + name] = state
            # it drew before seeding, or never seeded; a generator made during the body (numpy
            # imported by it) started from fresh entropy, which no run gives again: no input
            if before != "-" and self.seeded.get(name) != before:
                inputs[RNG_PREFIX + name] = before
        return inputs, outputs

    def seeding(self, name: str) -> None:
        if name not in self.seeded:
            self.seeded[name] = _hash(_state(name))


def _wrapper(original: Any, name: str, seeds: bool) -> Any:
    def draw(*args: Any, **kwargs: Any) -> Any:
        draws = _watching.get()
        if draws is None:
            _elsewhere[name] += 1
        elif seeds:
            draws.seeding(name)
        else:
            draws.drew.add(name)
        return original(*args, **kwargs)
    draw.__wrapped__ = original          # type: ignore[attr-defined]
    draw.__doc__ = original.__doc__
    draw.__name__ = getattr(original, "__name__", "draw")
    draw._nbbuild = True                 # type: ignore[attr-defined]
    return draw


def _wrap_module(module: Any, generator: Any, name: str) -> None:
    for attr in dir(module):
        fn = getattr(module, attr, None)
        if getattr(fn, "_nbbuild", False) or getattr(fn, "__self__", None) is not generator:
            continue
        if attr in ("getstate", "setstate", "get_state", "set_state"):
            continue
        setattr(module, attr, _wrapper(fn, name, seeds=attr == "seed"))


_installed: set[str] = set()


def install() -> None:
    if "random" not in _installed:
        _installed.add("random")
        _wrap_module(random, getattr(random, "_inst", None), "random")
    nr = _numpy_random()
    if nr is not None and "numpy" not in _installed:
        _installed.add("numpy")
        _wrap_module(nr, getattr(getattr(nr, "mtrand", None), "_rand", None), "numpy")
        if not getattr(nr.seed, "_nbbuild", False):    # a function of its own, not the generator's method
            nr.seed = _wrapper(nr.seed, "numpy", seeds=True)
