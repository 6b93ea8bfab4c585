"""Every NBBUILD_* environment variable: its name, its type, its default, what it accepts, one line
of documentation. No other module reads these variables; they ask this one.

Contract:
- `SETTINGS` is the table: one `Setting` a variable. README's "Configuration" table names each of
  them and no other (tests/test_settings.py holds the two to each other).
- `read(environ=None)` reads them all from `environ` (os.environ when None) and returns a frozen
  `Settings` with one attribute a variable (`NBBUILD_MIN_FREE` -> `.min_free`). A variable that is
  unset or blank gives its default. A value a variable does not accept is a `SettingError`
  (errors.py) in one line naming the variable, the value and what it accepts; nothing is read
  half-way.
- Read once, when used: not at import (a test's monkeypatch, a notebook's `%env` before
  `%load_ext nbbuild` and a CLI's environment all count). A `Build` reads them when it is made and
  keeps that snapshot (`Build.settings`) for its life: its store's bounds, its progress line, its
  shared tier and how long closing waits for uploads. `Build.share(url)` reads them again, as a
  `%nbbuild store --shared URL` given later means the environment of then (its team key). The
  `nbbuild` command reads them once at its start, the notebook layer once at `%load_ext`.
- Sizes are bytes, with None for "not set" and `math.inf` for "no limit" (`unlimited`, `none`):
  the argument of a Build comes first, so "not set" and "no limit" must differ.
- Changes made later (`%nbbuild store --quota/--min-free/--eviction`, `Build.set_quota`, the
  store's `quota`, `min_free` and `policy`) go through the same validation as the variables
  (store/eviction.py `size`, `policy`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import SettingError
from .store.eviction import policy, size

__all__ = ["Setting", "Settings", "SETTINGS", "read"]

_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


# ---------------------------------------------------------------- what a value may be

def _flag(meaning: str) -> Callable[[str, str], bool]:
    def flag(text: str, name: str) -> bool:
        if text.lower() in _YES:
            return True
        if text.lower() in _NO:
            return False
        raise SettingError(f"{name}={text.lower()!r}: use {meaning}")
    return flag


def _choice(*options: str, meaning: str) -> Callable[[str, str], str]:
    def choice(text: str, name: str) -> str:
        if text.lower() not in options:
            raise SettingError(f"{name}={text.lower()!r}: use {meaning}")
        return text.lower()
    return choice


def _seconds(text: str, name: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds >= 0:
        raise SettingError(f"{name}={text!r}: give a number of seconds, 0 or more")
    return seconds


def _text(text: str, name: str) -> str:
    return text


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class Setting:
    name: str                              # the environment variable
    parse: Callable[[str, str], Any]       # (text, name) -> value; SettingError when not accepted
    default: Any                           # when unset or blank (None: decided where it is used)
    doc: str

    @property
    def field(self) -> str:
        return self.name.removeprefix("NBBUILD_").lower()


SETTINGS: tuple[Setting, ...] = (
    Setting("NBBUILD_DIR", _text, None,
            "the store's folder for %load_ext and the `nbbuild` command (default .nbbuild beside the notebook)"),
    Setting("NBBUILD_QUOTA", size, None,
            "the store's quota (`2 GB`, `unlimited`), after Build(quota=) and before the one saved in the store"),
    Setting("NBBUILD_MIN_FREE", size, None, "free disk space to keep; values are evicted below it"),
    Setting("NBBUILD_EVICTION", policy, None, "what is evicted first: gdsf (the default) or lru"),
    Setting("NBBUILD_PROGRESS", _flag("1 (show builds on stderr) or 0 (do not)"), None,
            "show builds as a text line on stderr (default: when stderr is a terminal, outside Jupyter)"),
    Setting("NBBUILD_VIEW", _choice("text", "widget", meaning="text (the progress line on stderr) or widget "
                                    "(the default)"), "widget",
            "a kernel's build view: the widget, or the text line on its stderr (what `nbbuild run` sets)"),
    Setting("NBBUILD_SHARED", _text, None, "the team's shared tier (s3://bucket/prefix, a shared folder)"),
    Setting("NBBUILD_TEAM_KEY", _text, None, "the team key file the shared tier is signed with"),
    Setting("NBBUILD_SHARED_READONLY", _flag("1 (never upload) or 0"), False, "read the shared tier, never upload"),
    Setting("NBBUILD_SHARED_WAIT", _seconds, 30.0, "seconds a process waits at exit for its uploads"),
    Setting("NBBUILD_SHARED_QUOTA", size, None, "the shared tier's quota for `nbbuild store gc --shared`"),
)


@dataclass(frozen=True)
class Settings:
    """The settings as read at one moment (`read`)."""
    dir: str | None = None
    quota: int | float | None = None
    min_free: int | float | None = None
    eviction: str | None = None
    progress: bool | None = None
    view: str = "widget"
    shared: str | None = None
    team_key: str | None = None
    shared_readonly: bool = False
    shared_wait: float = 30.0
    shared_quota: int | float | None = None


def read(environ: Mapping[str, str] | None = None) -> Settings:
    """Every setting from `environ` (os.environ when None), validated; SettingError for the first
    value a variable does not accept."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        text = environ.get(s.name, "").strip()
        values[s.field] = s.parse(text, s.name) if text else s.default
    return Settings(**values)

