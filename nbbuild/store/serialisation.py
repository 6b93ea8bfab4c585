"""Values as stored: pickled once, hashed in the same pass, in the layout value rows and value
files hold.

Contract:
- `serialize(value)` pickles a value once and returns `(blob, hash)`: the hash is xxh3_128 of the
  very bytes that are stored, so a value is hashed in one pass. Pickle protocol 5 with out-of-band
  buffers (numpy arrays are hashed straight from their memory). Sets inside plain containers are
  pickled in a canonical order, so equal values hash equally whatever `PYTHONHASHSEED` is.
  `pickle_value(value)` gives the same as a `Serialized` whose buffers are still the value's own
  memory and whose hash is computed when first asked (large values are written without a copy).
  Pickling and unpickling are pickling.py's (cloudpickle, keeping what plain execution gives: a
  function of `__main__` loaded reads `__main__`'s globals, a class keeps its qualified name).
- `deserialize(blob)` is its inverse; `split(blob)` checks a blob's layout and cuts it into parts.
- `hash_bytes(*parts)` is the one hash nbbuild uses (xxh3_128, hex); `canonical(x)` is `x` with
  its sets in a canonical order (for other canonical pickles: engine/arguments.py).
Task arguments are encoded by engine/arguments.py, code fingerprinted by engine/code.py.
"""
from __future__ import annotations

import pickle
import struct
from typing import Any

import xxhash

from . import pickling

__all__ = [
    "serialize", "deserialize", "hash_bytes", "value_hash", "canonical", "dump", "UnserializableValue",
    "Serialized", "pickle_value", "split", "unpickle", "MAGIC",
]

MAGIC = b"NBV1"
_SIMPLE = (int, float, str, bytes, bool, type(None))


class UnserializableValue(Exception):
    """A value that cannot be pickled; the message says why."""


def hash_bytes(*parts: bytes | memoryview) -> str:
    h = xxhash.xxh3_128()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def _sort_key(item: Any) -> tuple[str, bytes]:
    # canonical bytes, not repr: the repr of a nested set depends on the hash seed
    return (type(item).__qualname__, dump(canonical(item)))


class _SortedSet:
    """Pickles as the set it stands for, with its items in a canonical order."""

    __slots__ = ("items", "kind")

    def __init__(self, items: list, kind: type):
        self.items, self.kind = items, kind

    def __reduce__(self) -> tuple:
        return self.kind, (self.items,)


def canonical(x: Any) -> Any:
    """A copy of `x` whose sets (inside lists, tuples and dicts) pickle in a canonical order.
    CPython's pickler never consults reducer_override for exact sets, so this is done beforehand."""
    t = type(x)
    if t is set or t is frozenset:
        try:
            items = [canonical(i) for i in sorted(x)]
        except TypeError:
            items = sorted((canonical(i) for i in x), key=_sort_key)
        return _SortedSet(items, t)
    if t is list:
        return [canonical(i) for i in x]
    if t is tuple:
        return tuple(canonical(i) for i in x)
    if t is dict:
        return {k: canonical(v) for k, v in x.items()}
    return x


def dump(value: Any, buffers: list | None = None) -> bytes:
    return pickling.dump(value, buffers)


# pickle opcodes that build sets: EMPTY_SET, FROZENSET (protocol 4+)
_SET_OPCODES = (b"\x8f", b"\x91")
# what canonical can rewrite: any other value pickles to the same stream after it
_CONTAINERS = (list, tuple, dict, set, frozenset)


class Serialized:
    """A pickled value in the stored layout: `header` (magic, buffer count, sizes), `meta` (the
    pickle stream) and `raws` (out-of-band buffers, still the value's own memory). `digest` is
    xxh3_128 of meta and raws, computed when first asked (a value file computes it while it is
    written: `known` says whether it is there yet)."""

    __slots__ = ("header", "meta", "raws", "nbytes", "_digest")

    def __init__(self, meta: bytes, raws: list[memoryview]):
        self.meta, self.raws = meta, raws
        self.header = MAGIC + struct.pack(f"<I{len(raws) + 1}Q", len(raws), len(meta), *(r.nbytes for r in raws))
        self.nbytes = len(self.header) + len(meta) + sum(r.nbytes for r in raws)
        self._digest: str | None = None

    @property
    def known(self) -> bool:
        return self._digest is not None

    @property
    def digest(self) -> str:
        if self._digest is None:
            h = xxhash.xxh3_128(self.meta)
            for r in self.raws:
                h.update(r)
            self._digest = h.hexdigest()
        return self._digest

    @digest.setter
    def digest(self, value: str) -> None:
        self._digest = value

    @property
    def signed(self) -> int:
        """Bytes at the start of the blob that a signature covers: the header and pickle stream."""
        return len(self.header) + len(self.meta)

    def blob(self) -> bytes:
        return b"".join([self.header, self.meta, *self.raws]) if self.raws else self.header + self.meta


def pickle_value(value: Any) -> Serialized:
    """Pickle `value` (protocol 5, out-of-band buffers). Raises UnserializableValue."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        if type(value) in _SIMPLE:
            meta = pickle.dumps(value, 5)
        else:
            meta = dump(value, buffers)
            # those bytes also occur as data (in a frame's strings, in an int): pickle again only
            # a container that canonical can change, not every value whose stream holds them
            if type(value) in _CONTAINERS and any(op in meta for op in _SET_OPCODES):
                buffers = []
                meta = dump(canonical(value), buffers)
        raws = [b.raw() for b in buffers]
    except Exception as e:  # pickling runs arbitrary reducers: any error means "cannot store"
        raise UnserializableValue(f"{type(value).__name__} cannot be pickled: {e}") from None
    return Serialized(meta, raws)


def serialize(value: Any) -> tuple[bytes, str]:
    """Pickle `value` and hash the result: (blob, hash). Raises UnserializableValue."""
    ser = pickle_value(value)
    return ser.blob(), ser.digest


def value_hash(value: Any) -> str:
    return pickle_value(value).digest


def split(blob: bytes | memoryview) -> tuple[memoryview, list[memoryview], int]:
    """(pickle stream, buffers, signed length) of a blob; ValueError if it is not one."""
    view = memoryview(blob)
    if len(view) < 12 or bytes(view[:4]) != MAGIC:
        raise ValueError("not an nbbuild value")
    (n,) = struct.unpack_from("<I", view, 4)
    if 8 + 8 * (n + 1) > len(view):
        raise ValueError("a damaged nbbuild value")
    sizes = struct.unpack_from(f"<{n + 1}Q", view, 8)
    pos = 8 + 8 * (n + 1)
    if pos + sum(sizes) != len(view):
        raise ValueError("a truncated nbbuild value")
    meta = view[pos:pos + sizes[0]]
    signed = pos + sizes[0]
    pos = signed
    buffers = []
    for size in sizes[1:]:
        buffers.append(view[pos:pos + size])
        pos += size
    return meta, buffers, signed


def unpickle(meta: bytes | memoryview, buffers: list[Any]) -> Any:
    return pickling.loads(meta, buffers)


def unpickle_noting(meta: bytes | memoryview, buffers: list[Any]) -> tuple[Any, bool]:
    """(the value, whether it holds classes pickled by value: pickling.loads_noting)."""
    return pickling.loads_noting(meta, buffers)


def deserialize(blob: bytes | memoryview) -> Any:
    meta, buffers, _ = split(blob)
    # writable copies: arrays loaded from the store must behave like fresh ones
    return pickling.loads(meta, [bytearray(b) for b in buffers])
