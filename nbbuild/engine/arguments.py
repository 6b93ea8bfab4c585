"""Task arguments as canonical text: what a task's key is the hash of.

Contract: `encode_args(args)` gives a canonical, JSON-decodable text for a task's (normalised)
arguments: equal arguments give equal text whatever the process (sets sorted, no `hash()`);
`decode_args(text)` reverses it. Plain data (None, bool, int, float, str, bytes, lists, tuples,
dicts, sets, paths) is written as JSON with tags for what JSON lacks; anything else as a canonical
pickle (base64), loaded back through pickling.loads_plain (nbbuild's own old module paths too).
Raises UnserializableValue for an argument that cannot be pickled.
"""
from __future__ import annotations

import base64
import json
import math
import pathlib
from typing import Any

from ..store import pickling
from ..store.serialisation import UnserializableValue, canonical, dump

__all__ = ["encode_args", "decode_args"]


def _enc(x: Any) -> Any:
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        return x if math.isfinite(x) else {"$f": repr(x)}
    if t is list:
        return [_enc(i) for i in x]
    if t is tuple:
        return {"$t": [_enc(i) for i in x]}
    if t is dict:
        return {"$d": [[_enc(k), _enc(v)] for k, v in x.items()]}
    if t is set or t is frozenset:
        items = [_enc(i) for i in x]
        items.sort(key=lambda e: json.dumps(e, sort_keys=True))
        return {"$s" if t is set else "$fs": items}
    if t is bytes:
        return {"$b": base64.b64encode(x).decode()}
    if isinstance(x, pathlib.PurePath):
        return {"$p": [type(x).__name__, str(x)]}
    try:
        data = _canonical_pickle(x)
    except Exception as e:
        raise UnserializableValue(f"argument of type {t.__name__} cannot be pickled: {e}") from None
    return {"$pk": base64.b64encode(data).decode()}


def _canonical_pickle(x: Any) -> bytes:
    return dump(canonical(x))


def _dec(x: Any) -> Any:
    if type(x) is list:
        return [_dec(i) for i in x]
    if type(x) is not dict:
        return x
    (tag, v), = x.items()
    if tag == "$t":
        return tuple(_dec(i) for i in v)
    if tag == "$d":
        return {_dec(k): _dec(val) for k, val in v}
    if tag == "$s":
        return {_dec(i) for i in v}
    if tag == "$fs":
        return frozenset(_dec(i) for i in v)
    if tag == "$f":
        return float(v)
    if tag == "$b":
        return base64.b64decode(v)
    if tag == "$p":
        return getattr(pathlib, v[0], pathlib.Path)(v[1])
    if tag == "$pk":
        return pickling.loads_plain(base64.b64decode(v))
    raise ValueError(f"unknown argument tag {tag!r}")


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_args(args: tuple) -> str:
    """Canonical text of a task's (normalised) arguments."""
    return _JSON.encode([_enc(a) for a in args])


def decode_args(text: str) -> tuple:
    return tuple(_dec(a) for a in json.loads(text))
