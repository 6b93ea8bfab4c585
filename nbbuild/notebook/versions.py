"""Versions of names: which binding of a name each cell reads, as plain execution gives it, and
which values a cell changed in place.

A notebook binds the same name in many cells (`fig, ax = plt.subplots()` in every plotting cell,
`df = df.dropna()`, loop variables). Each binding is a version of the name; a cell reads the
latest version bound before it ran, in the order cells ran, by a rule cell or an ordinary one.

Contract:
- `Versions` follows the notebook as its cells run:
  - `bound(rule, names)`: those names' latest version is now that rule's (a rule cell ran or was
    restored, or was registered with --lazy); `bound(None, names)`: an ordinary cell bound them,
    and readers take them by value from the namespace. `read_plainly(names)`: an ordinary cell
    read them, and may have changed them in place: their version is now the namespace's.
  - `resolve(reads, own)`: for each name a cell reads whose latest version a rule bound (not the
    cell's own rule: re-running `x = x + 1` reads the `x` it made, by value), that rule's name.
    The cell's rule fetches them from those rules; every other name is read by value.
  - `producer(name)`: the rule whose version of `name` is the latest, or None.
  - `imported(rule, names)`: a rule cell bound them by import (read by value, as modules are the
    same whoever imports them); `binds(rule, name)`: whether the rule's value of `name` is the
    latest version, so that running the rule binds it.
- `identity(cell_id, source, fetched, first)`: the rule name of a cell that gives none: the first
  name it assigns (`cell` when it binds none) and a digest. With a cell id (JupyterLab, Notebook
  7, VS Code) the digest is the cell id's, so an edited cell keeps its rule; without one
  (nbclient, papermill, nbval, terminal IPython) it is the digest of the source and of the rules
  it fetches from, which Restart & Run All gives again, and inserting, deleting or moving other
  cells does not change.
- `Changes`: what one run of a cell changed in place. `watch(name, value)` takes a fingerprint of a
  value read by value before the body runs; `fetched(value, digest)` notes a rule's value (its
  dict of outputs) fetched with the hash it was stored under, and takes a fingerprint of each of
  its names. `changed(scope)` afterwards gives the names whose values changed in place, with
  their values: a watched name that fingerprints differently, and each name of a fetched rule's
  value that does (`fig` and `ax` share one figure, so a change through `ax` changes both
  fingerprints; `x` beside them keeps its own and stays the fetched rule's version). A value
  whose pickle differs from one time to the next (a matplotlib figure) counts as changed: a new
  version that equals the old is harmless, a missed change is a stale value. The rules whose
  values changed are in `spoiled` (their digests), so that the in-memory copy, now changed, is
  dropped and the stored one used.
"""
from __future__ import annotations

import types
from typing import Any

import xxhash

from ..store.serialisation import UnserializableValue, value_hash
from ..engine.rule import Rule

__all__ = ["Versions", "Changes", "identity", "unchangeable", "fingerprint"]

_UNCHANGEABLE = (int, float, complex, str, bytes, bool, type(None), frozenset, range, types.ModuleType,
                 types.FunctionType, types.BuiltinFunctionType, type, types.MethodType)


def unchangeable(value: Any) -> bool:
    """Values nobody changes in place: numbers, strings, modules, functions and classes (whose
    code is versioned by the rule's version, not by value)."""
    if isinstance(value, tuple):
        return all(unchangeable(v) for v in value)
    return isinstance(value, (_UNCHANGEABLE, Rule))


def identity(cell_id: str | None, source: str, fetched: dict[str, str], first: str | None) -> str:
    if cell_id:
        digest = xxhash.xxh3_64_hexdigest(f"id:{cell_id}".encode())
    else:
        context = "\n".join(f"{n}={r}" for n, r in sorted(fetched.items()))
        digest = xxhash.xxh3_64_hexdigest(f"source:{source}\0{context}".encode())
    return f"{first or 'cell'}_{digest[:8]}"


class Versions:
    def __init__(self) -> None:
        self.latest: dict[str, str | None] = {}    # name -> rule of its latest version (None: ordinary)
        self.importers: dict[str, str] = {}        # a name a rule cell bound by an import -> that rule

    def bound(self, rule: str | None, names: tuple[str, ...] | list[str]) -> None:
        for name in names:
            self.latest.pop(name, None)      # the newest binding is the last in the dict's order
            self.latest[name] = rule
            self.importers.pop(name, None)

    def imported(self, rule: str, names: tuple[str, ...] | list[str]) -> None:
        """A rule cell imported them: a module is the same whoever imports it, so readers take
        it by value (no dependency on the cell), but the cell binds it when it runs."""
        self.bound(None, names)
        self.importers.update((n, rule) for n in names)

    def binds(self, rule: str, name: str) -> bool:
        """Whether the rule's value of `name` is the latest version (to be bound when it runs)."""
        return name not in self.latest or self.latest[name] == rule or self.importers.get(name) == rule

    def read_plainly(self, names: set[str] | list[str]) -> list[str]:
        """Names an ordinary cell read that rules had bound: now read by value. Returns the rules."""
        rules = [r for n in names if (r := self.latest.get(n)) is not None]
        self.bound(None, [n for n in names if self.latest.get(n) is not None])
        return rules

    def dropped(self, rule: str) -> None:
        """The rule is gone (its cell now defines another): what it bound stays in the namespace."""
        for name, r in list(self.latest.items()):
            if r == rule:
                self.latest[name] = None

    def producer(self, name: str) -> str | None:
        return self.latest.get(name)

    def resolve(self, reads: tuple[str, ...], own: str | None) -> dict[str, str]:
        return {n: r for n in reads if (r := self.latest.get(n)) is not None and r != own}

    def names_of(self, rule: str) -> list[str]:
        """The names whose latest version the rule bound."""
        return [n for n, r in self.latest.items() if r == rule]


def fingerprint(value: Any) -> str | None:
    try:
        return value_hash(value)
    except (UnserializableValue, RecursionError):
        return None        # cannot be told: it cannot be stored either


def _fingerprints(value: dict) -> dict[str, str | None]:
    """A fingerprint of each entry of a rule's value that can change in place. Names sharing an
    object (`fig` and `ax`) each fingerprint it: a change through one changes both."""
    return {k: fingerprint(v) for k, v in value.items() if not unchangeable(v)}


class Changes:
    def __init__(self) -> None:
        self.watched: dict[str, tuple[Any, str | None]] = {}
        self.rules: list[tuple[dict, str, dict[str, str | None], str | None]] = []
        self.spoiled: list[str] = []
        self.origins: dict[str, str] = {}

    def watch(self, name: str, value: Any) -> None:
        if name not in self.watched and not unchangeable(value):
            self.watched[name] = (value, fingerprint(value))

    def fetched(self, value: Any, digest: str | None, rule: str | None = None) -> None:
        if digest is not None and isinstance(value, dict) and all(v[0] is not value for v in self.rules):
            # each name's fingerprint now, not the stored hash: the same value loaded back can
            # pickle differently (pickle shares equal objects by identity); by name, so that a
            # value of the rule that pickles differently each time changes only itself
            self.rules.append((value, digest, _fingerprints(value), rule))

    def changed(self, scope: dict) -> dict[str, Any]:
        """The names whose values the body changed in place: a name read by value, or each name
        of a fetched rule's value that changed (`fig` with `ax`, not `x` beside them). `origins`
        then says which rule's value each of the latter came from: whether it is a new version of
        the name is decided when it is bound (only while that rule's is the latest), not here, for
        a reused cell is bound among other cells than those it ran among."""
        out: dict[str, Any] = {}
        for name, (value, before) in self.watched.items():
            if before is not None and scope.get(name) is value and fingerprint(value) != before:
                out[name] = value
        for value, digest, fingerprints, rule in self.rules:
            changed = [k for k, f in fingerprints.items() if f is None or fingerprint(value.get(k)) != f]
            if changed:
                self.spoiled.append(digest)
            for k in changed:
                if not k.startswith("__") and k not in out:
                    out[k] = value[k]
                    if rule is not None:
                        self.origins[k] = rule
        return out
