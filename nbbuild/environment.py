"""Environment variables as inputs of a rule, by key.

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
- `digest(key)` is the current hash of such an input key (what verification compares with the
  recorded one); `describe(key)` says it in words for `why`.
Reads in threads or processes a body starts are not tracked (as for files); a body run elsewhere
records what its worker's environment gave it.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any

from .hashing import hash_bytes
from .trace import ENV_ALL, ENV_PREFIX, MISSING, current

__all__ = ["install", "digest", "describe", "ENV_PREFIX", "ENV_ALL"]

log = logging.getLogger("nbbuild")
_lock = threading.Lock()
_installed = False


def _name(key: Any) -> str | None:
    """The variable's name as text (os.environb's keys are bytes); None for a key of no variable."""
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return os.fsdecode(key)
    return None


def _value_hash(name: str) -> str:
    # read straight from the mapping's data (not through the tracked methods): hashing is not a read
    data = os.environ._data       # type: ignore[attr-defined]
    try:
        raw = data[os.environ.encodekey(name)]        # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError, UnicodeError):
        return MISSING
    return hash_bytes(b"v", raw if isinstance(raw, bytes) else os.fsencode(raw))


def _all_hash() -> str:
    data = os.environ._data       # type: ignore[attr-defined]
    items = sorted((k if isinstance(k, bytes) else os.fsencode(k), v if isinstance(v, bytes) else os.fsencode(v))
                   for k, v in list(data.items()))
    return hash_bytes(b"all", *(k + b"\0" + v + b"\0" for k, v in items))


def digest(key: str) -> str:
    """The hash an input key of this module has now."""
    if key == ENV_ALL:
        return _all_hash()
    if key.startswith(ENV_PREFIX):
        return _value_hash(key[len(ENV_PREFIX):])
    return "?"        # not ours: matches no recorded hash


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
            rec.read_input(ENV_PREFIX + name, _value_hash(name))
    except Exception:  # a read must work as it did without us
        log.debug("nbbuild: could not record the read of %r", key, exc_info=True)


def _read_all() -> None:
    rec = _recorder()
    if rec is None:
        return
    try:
        rec.read_input(ENV_ALL, _all_hash())
    except Exception:  # as in _read
        log.debug("nbbuild: could not record a read of the whole environment", exc_info=True)


def _wrote(key: Any) -> None:
    rec = _recorder()
    if rec is None:
        return
    name = _name(key)
    if name is not None:
        try:
            rec.wrote_input(ENV_PREFIX + name)
        except Exception:  # as in _read
            log.debug("nbbuild: could not record the write of %r", key, exc_info=True)


class _TrackedEnviron(os._Environ):     # type: ignore[name-defined,misc]
    """os._Environ that tells the running rule body's recorder what it reads. No state of its own:
    only its class is swapped on the existing objects. Mapping's get, __contains__, pop and
    setdefault go through __getitem__; keys, items, values, copy, ==, | through __iter__."""

    def __getitem__(self, key: Any) -> Any:
        try:
            return super().__getitem__(key)
        finally:
            _read(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        _wrote(key)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        _wrote(key)

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
            if env is not None and type(env) is os._Environ:      # type: ignore[attr-defined]
                env.__class__ = _TrackedEnviron
        _installed = True
