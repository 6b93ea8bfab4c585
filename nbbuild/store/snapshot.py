"""The index's snapshot: every trace one key could read from a store, in one signed row.

A fresh process (a kernel restart, `nbbuild run`, a script) must know the store's traces before
it can reuse anything. Read row by row that is one select, one MAC and one decoding per trace
(about half of a fresh no-op rebuild of 10,000 tasks); read from a snapshot it is one row, one
MAC and one `marshal.loads`.

Contract:
- `read(table, signer)` returns the snapshot this key wrote (row `k:<key id>`), or None when there
  is none, its MAC does not verify, its format is another's, or it is out of date. It covers
  every trace row with a rowid at or below its `watermark` that this key could read; what came
  later is read row by row (index.py). Out of date: the number of trace rows at or below the
  watermark is not the one it was written with. The table never hands a rowid out twice and
  replaces a row with a new rowid (table.py), so rows are only ever added above a watermark, and
  the same count means no row it covers was deleted (evicted, pruned, cleared, replaced).
- `write(table, signer, snapshot)` stores one, replacing the last; it is a cache, so a failed
  write is only logged (the next fresh process reads row by row, as without one).
- `read_verified` / `write_verified`: beside it, in row `g:<key id>`, signed as it is, what the
  last build of this key verified (engine/verified.py dumps and restores it; opaque here), so
  that a fresh process re-checks inputs rather than walking every trace. `clear` deletes it with
  the rest; a row that does not verify is not used.
- A snapshot holds the traces (each at most MAX_TRACES per task key, as the index keeps them)
  and the rows another key signed (reported once per process, as a row by row read does).
  Traces are facts (this version, with these dependencies' hashes, gave this value's hash): one
  that is still in a snapshot after another process deleted its row says nothing false, and the
  count makes sure it is not used for long.
"""
from __future__ import annotations

import logging
import marshal
import sys
from dataclasses import dataclass

from ..engine.trace import Trace
from .signing import Signer
from .table import WRITE_ERRORS, Table

__all__ = ["Snapshot", "read", "write", "covered", "read_verified", "write_verified"]

log = logging.getLogger("nbbuild")
_FORMAT = "nbbuild-snapshot-2"
# Trace's fields and what it derives once (trace.py: `split`, `environment`), which a fresh process
# needs of every trace: marshal keeps their types exactly
_FIELDS = ("key", "rule", "args", "repr", "version", "deps", "result", "seconds", "parts", "packages",
           "created", "outputs", "environ", "_split", "_env")
_DECODE_ERRORS = (ValueError, EOFError, TypeError, KeyError)


@dataclass(frozen=True)
class Snapshot:
    watermark: int                  # every trace row with a rowid up to here is covered
    count: int                      # how many trace rows there were up to the watermark
    traces: dict[str, list[Trace]]  # task key -> traces, newest first
    foreign: tuple[str, ...]        # rows up to the watermark another key signed


def _row(signer: Signer) -> str:
    return "k:" + signer.kid.hex()


def covered(table: Table, watermark: int) -> int:
    """How many trace rows have a rowid at or below `watermark`."""
    return table.sql("SELECT COUNT(*) FROM Cache WHERE key >= 't:' AND key < 'u:' AND raw = 1"
                     " AND rowid <= ?", (watermark,))[0][0]


def _opened(table: Table, signer: Signer, row: str) -> memoryview | None:
    """The row's data when it is there and its signature verifies."""
    found = table.get(row)
    if found is None or not isinstance(found[0], bytes):
        return None
    return signer.open(row, found[0])


def read(table: Table, signer: Signer) -> Snapshot | None:
    data = _opened(table, signer, _row(signer))
    if data is None:
        return None
    try:
        form, watermark, count, foreign, rows = marshal.loads(data)
        if form != _FORMAT:
            return None
        traces: dict[str, list[Trace]] = {}
        new, fields = object.__new__, _FIELDS
        for task_key, lst in rows:
            loaded = traces[task_key] = []
            for values in lst:
                tr = new(Trace)      # not the frozen __init__, as Trace.decode: thousands of them
                tr.__dict__.update(zip(fields, values))
                loaded.append(tr)
    except _DECODE_ERRORS:
        return None
    if covered(table, watermark) != count:
        return None
    return Snapshot(watermark, count, traces, tuple(foreign))


def write(table: Table, signer: Signer, snapshot: Snapshot) -> None:
    shared: dict[tuple, tuple] = {}
    rows = [(sys.intern(key), [_fields(tr, shared) for tr in lst]) for key, lst in snapshot.traces.items() if lst]
    data = marshal.dumps((_FORMAT, snapshot.watermark, snapshot.count, list(snapshot.foreign), rows))
    _seal(table, signer, _row(signer), data, "the index's snapshot")


def _seal(table: Table, signer: Signer, row: str, data: bytes, what: str) -> None:
    """Write a cache row, signed; a failed write is only logged (the next fresh process does without)."""
    try:
        with table.transact():
            table.upsert([(row, signer.seal(row, data))])
    except WRITE_ERRORS as e:
        log.debug("nbbuild: %s was not written (%s)", what, e)


def _fields(tr: Trace, shared: dict[tuple, tuple]) -> tuple:
    """The trace's fields in _FIELDS' order, the strings that recur made one object each, and the
    parts and packages of a rule version one tuple for all its traces: marshal then writes each
    once (a task key and a value hash recur in the traces that read them), and a fresh process
    holds each once (fewer objects, less for the garbage collector to go over). A task's
    arguments and repr are its own: not interned."""
    d, i = tr.__dict__, sys.intern
    parts = tuple([(i(a), i(b)) for a, b in d["parts"]])
    packages = tuple([(i(a), i(b)) for a, b in d["packages"]])
    tasks, files = tr.split()
    return (i(d["key"]), i(d["rule"]), d["args"], d["repr"], i(d["version"]),
            tuple([tuple([(i(k), i(h)) for k, h in group]) for group in d["deps"]]), i(d["result"]),
            d["seconds"], shared.setdefault(parts, parts), shared.setdefault(packages, packages),
            d["created"], d["outputs"], d["environ"],
            (tuple([i(k) for k in tasks]), tuple([(i(p), i(h)) for p, h in files])),
            tuple([(i(k), i(h)) for k, h in tr.environment()]))


def _verified_row(signer: Signer) -> str:
    return "g:" + signer.kid.hex()


def read_verified(table: Table, signer: Signer) -> bytes | None:
    data = _opened(table, signer, _verified_row(signer))
    return data.tobytes() if data is not None else None


def write_verified(table: Table, signer: Signer, data: bytes) -> None:
    _seal(table, signer, _verified_row(signer), data, "what the build verified")
