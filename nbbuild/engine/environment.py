"""Environment variables as inputs of a rule, by key, and as effects of its run.

Contract:
- `install()` (once per process; later calls do nothing) gives `os.environ` and `os.environb` a
  tracking subclass of `os._Environ`: they behave exactly as before (same object, same data, the
  same `putenv` on writes), and while a rule body runs (`trace.current` is set and not paused)
  each read is recorded in its trace:
  - by key: `os.environ[k]`, `.get(k)`, `k in os.environ`, `os.getenv(k)`, `.pop(k)`,
    `.setdefault(k, ...)` and the same on `os.environb` record `ENV_PREFIX + k` with the hash of
    its value, or `MISSING` when it is not set. `os.environb` keys are the same variables
    (decoded with the file system encoding), so both spell one input.
  - whole: iterating, `len`, `dict(os.environ)`, `.copy()`, `.keys()`/`.items()`/`.values()`,
    `repr`, `==` record `ENV_ALL` with the hash of every variable.
  A variable the body sets (or deletes) before reading it is not an input: it read its own write.
  Engine work (a paused recorder) and code outside rule bodies record nothing; recording never
  raises into the caller.
- Variables a body sets are its effects, as in plain execution (`import sklearn` sets
  KMP_DUPLICATE_LIB_OK unless the user did): the value it read before setting one is its input,
  the value it leaves is an effect of its run. `finish(owner, recorder)`, when the body returned,
  gives the effects (name, value or None: unset) of the variables it left changed, for its trace,
  and notes in this process that `owner` (a task of a store) left them so. `restore(owner,
  effects)` sets them again when a trace is reused (nothing if they already hold those values),
  and notes the same. `forget(owner)` when the task runs again.
- `digest(key, owner=None)` is the current hash of such an input key (what verification compares
  with the recorded one), where a variable `owner` left (and nobody changed since) counts at the
  value it had before: its own doing is not a change of its input, and the whole environment is
  hashed so too; a read of the whole environment in a body counts the variables the body set at
  their values before it. `pending(effects)`: the variables that no longer hold their effect.
  `describe(key)` says it in words for `why`.
Reads in threads or processes a body starts are not tracked (as for files); a body run elsewhere
records what its worker's environment gave it, and what it sets stays in the worker.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Iterable

from ..store.serialisation import hash_bytes
from .trace import ENV_ALL, ENV_PREFIX, MISSING, Recorder, current

__all__ = ["install", "digest", "owns", "describe", "finish", "restore", "forget", "pending", "ENV_PREFIX", "ENV_ALL"]

log = logging.getLogger("nbbuild")
_lock = threading.Lock()
_installed = False
# variable -> (owner, raw value before, raw value it left): the variables whose value a task's run
# or reuse left in this process; a write of another value by anyone drops the entry
Owner = tuple[str, str]      # who set a variable: (store path, task key), rebuild.Rebuilder.owner
_left: dict[str, tuple[Owner, Any, Any]] = {}


def _name(key: Any) -> str | None:
    """The variable's name as text (os.environb's keys are bytes); None for a key of no variable."""
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return os.fsdecode(key)
    return None


def _raw(name: str) -> Any:
    """The variable's value as the mapping keeps it (bytes on POSIX), or None when unset: read
    straight from its data, not through the tracked methods (looking is not a read)."""
    try:
        return os.environ._data.get(os.environ.encodekey(name))     # type: ignore[attr-defined]
    except (TypeError, ValueError, UnicodeError):
        return None


def _hash_raw(raw: Any) -> str:
    if raw is None:
        return MISSING
    return hash_bytes(b"v", raw if isinstance(raw, bytes) else os.fsencode(raw))


def _as_before(name: str, raw: Any, owner: Owner | None) -> Any:
    """`raw`, or the value before `owner` set the variable, when `raw` is what `owner` left."""
    left = _left.get(name) if owner is not None else None
    return left[1] if left is not None and left[0] == owner and left[2] == raw else raw


def _all_hash(owner: Owner | None = None, own: dict[str, Any] | None = None) -> str:
    """The whole environment's hash; with the variables `owner` left, and those in `own` (a
    running body's writes: name -> value before), at their values before."""
    data = dict(os.environ._data)       # type: ignore[attr-defined]
    undo = dict(own or {})
    if owner is not None:
        for name, (o, before, after) in list(_left.items()):
            if o == owner and name not in undo and _raw(name) == after:
                undo[name] = before
    for name, before in undo.items():
        try:
            k = os.environ.encodekey(name)
        except (TypeError, ValueError, UnicodeError):
            continue
        if before is None:
            data.pop(k, None)
        else:
            data[k] = before
    items = sorted((k if isinstance(k, bytes) else os.fsencode(k), v if isinstance(v, bytes) else os.fsencode(v))
                   for k, v in data.items())
    return hash_bytes(b"all", *(k + b"\0" + v + b"\0" for k, v in items))


def digest(key: str, owner: Owner | None = None) -> str:
    """The hash an input key of this module has now, for a task `owner` (see the contract)."""
    if key == ENV_ALL:
        return _all_hash(owner)
    if key.startswith(ENV_PREFIX):
        name = key[len(ENV_PREFIX):]
        return _hash_raw(_as_before(name, _raw(name), owner))
    return "?"        # not ours: matches no recorded hash


def owns(owner: Owner) -> bool:
    """Whether some variable holds a value `owner` left (its inputs are then its own to hash)."""
    return any(v[0] == owner for v in list(_left.values()))


# ---------------------------------------------------------------- effects

def _text(raw: Any) -> str | None:
    return None if raw is None else os.environ.decodevalue(raw)


def _encoded(value: str | None) -> Any:
    return None if value is None else os.environ.encodevalue(value)


def finish(owner: Owner, recorder: Recorder) -> tuple[tuple[str, str | None], ...]:
    """The effects of a body that returned: the variables it set that hold another value than
    before it, by name; `owner` left them."""
    effects = []
    with _lock:
        for name, before in sorted(recorder.env_set.items()):
            now = _raw(name)
            if now != before:
                effects.append((name, _text(now)))
                _left[name] = (owner, before, now)
    return tuple(effects)


def restore(owner: Owner, effects: Iterable[tuple[str, str | None]]) -> list[str]:
    """Set the variables as a reused run left them; the names of those that changed."""
    changed = []
    with _lock:
        for name, value in effects:
            before, wanted = _raw(name), _encoded(value)
            if before == wanted:
                continue
            # the untracked write: putting an effect back is neither a read nor a write of a body
            if value is None:
                os._Environ.__delitem__(os.environ, name)
            else:
                os._Environ.__setitem__(os.environ, name, value)
            _left[name] = (owner, before, _raw(name))
            changed.append(name)
    return changed


def pending(effects: Any) -> list[str]:
    """The variables among `effects` that do not hold the value the run left."""
    return [name for name, value in effects if _raw(name) != _encoded(value)]


def forget(owner: Owner) -> None:
    """`owner` runs again: what its last run left is an input like any other now."""
    with _lock:
        for name in [n for n, v in list(_left.items()) if v[0] == owner]:
            _left.pop(name, None)


def describe(key: str) -> str:
    if key == ENV_ALL:
        return "the environment changed"
    return f"environment variable {key[len(ENV_PREFIX):]} changed"


def _recorder() -> Any:
    rec = current.get()
    if rec is None or rec.paused:
        return None
    return rec


def _read(key: Any) -> None:
    rec = _recorder()
    if rec is None:
        return
    try:
        name = _name(key)
        if name is not None:
            rec.read_input(ENV_PREFIX + name, _hash_raw(_raw(name)))
    except Exception:  # a read must work as it did without us
        log.debug("nbbuild: could not record the read of %r", key, exc_info=True)


def _read_all() -> None:
    rec = _recorder()
    if rec is None:
        return
    try:
        rec.read_input(ENV_ALL, _all_hash(own=getattr(rec, "env_set", None)))
    except Exception:  # as in _read
        log.debug("nbbuild: could not record a read of the whole environment", exc_info=True)


def _current(key: Any) -> Any:
    name = _name(key)
    return _raw(name) if name is not None else None


def _wrote(key: Any, before: Any) -> None:
    name = _name(key)
    if name is None:
        return
    try:
        if _raw(name) != before:
            _left.pop(name, None)     # not what a task left any more (whoever wrote it)
        rec = _recorder()
        if rec is not None:
            rec.wrote_input(ENV_PREFIX + name, name, before)
    except Exception:  # as in _read
        log.debug("nbbuild: could not record the write of %r", key, exc_info=True)


class _TrackedEnviron(os._Environ):
    """os._Environ that tells the running rule body's recorder what it reads. No state of its own:
    only its class is swapped on the existing objects. Mapping's get, __contains__, pop and
    setdefault go through __getitem__; keys, items, values, copy, ==, | through __iter__."""

    def __getitem__(self, key: Any) -> Any:
        try:
            return super().__getitem__(key)
        finally:
            _read(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        before = _current(key)
        super().__setitem__(key, value)
        _wrote(key, before)

    def __delitem__(self, key: Any) -> None:
        before = _current(key)
        super().__delitem__(key)
        _wrote(key, before)

    def __iter__(self) -> Any:
        _read_all()
        return super().__iter__()

    def __len__(self) -> int:
        _read_all()
        return super().__len__()

    def __repr__(self) -> str:
        _read_all()
        return super().__repr__()


def install() -> None:
    """Track reads of os.environ and os.environb from now on, in this process."""
    global _installed
    with _lock:
        if _installed:
            return
        for name in ("environ", "environb"):
            env = getattr(os, name, None)
            if env is not None and type(env) is os._Environ:
                env.__class__ = _TrackedEnviron
        _installed = True
