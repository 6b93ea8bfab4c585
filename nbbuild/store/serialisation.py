"""Value and code fingerprints.

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
- `encode_args(args)` gives a canonical, JSON-decodable text for task arguments; `decode_args`
  reverses it. Task keys are hashes of that text, stable across processes.
- `code_fingerprint(code)` hashes what a code object does, not how it is written: its bytecode with
  line numbers, NOPs and docstrings removed, its constants and nested code objects, recursively.
  Comments, blank lines, formatting and docstrings do not change it; the Python version does.
"""
from __future__ import annotations

import base64
import bisect
import dis
import json
import math
import pathlib
import pickle
import struct
import sys
import types
from typing import Any

import xxhash

from . import pickling

__all__ = [
    "serialize", "deserialize", "hash_bytes", "value_hash", "encode_args", "decode_args",
    "code_fingerprint", "global_names", "free_reads", "PY_TAG", "UnserializableValue",
    "Serialized", "pickle_value", "split", "unpickle", "MAGIC",
]

PY_TAG = f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}"
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
    return (type(item).__qualname__, _dump(_canonical(item)))


class _SortedSet:
    """Pickles as the set it stands for, with its items in a canonical order."""

    __slots__ = ("items", "kind")

    def __init__(self, items: list, kind: type):
        self.items, self.kind = items, kind

    def __reduce__(self) -> tuple:
        return self.kind, (self.items,)


def _canonical(x: Any) -> Any:
    """A copy of `x` whose sets (inside lists, tuples and dicts) pickle in a canonical order.
    CPython's pickler never consults reducer_override for exact sets, so this is done beforehand."""
    t = type(x)
    if t is set or t is frozenset:
        try:
            items = [_canonical(i) for i in sorted(x)]
        except TypeError:
            items = sorted((_canonical(i) for i in x), key=_sort_key)
        return _SortedSet(items, t)
    if t is list:
        return [_canonical(i) for i in x]
    if t is tuple:
        return tuple(_canonical(i) for i in x)
    if t is dict:
        return {k: _canonical(v) for k, v in x.items()}
    return x


def _dump(value: Any, buffers: list | None = None) -> bytes:
    return pickling.dump(value, buffers)


# pickle opcodes that build sets: EMPTY_SET, FROZENSET (protocol 4+)
_SET_OPCODES = (b"\x8f", b"\x91")
# what _canonical can rewrite: any other value pickles to the same stream after it
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
            meta = _dump(value, buffers)
            # those bytes also occur as data (in a frame's strings, in an int): pickle again only
            # a container that _canonical can change, not every value whose stream holds them
            if type(value) in _CONTAINERS and any(op in meta for op in _SET_OPCODES):
                buffers = []
                meta = _dump(_canonical(value), buffers)
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


def deserialize(blob: bytes | memoryview) -> Any:
    meta, buffers, _ = split(blob)
    # writable copies: arrays loaded from the store must behave like fresh ones
    return pickling.loads(meta, [bytearray(b) for b in buffers])


# ---------------------------------------------------------------- task arguments

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
    return _dump(_canonical(x))


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


# ---------------------------------------------------------------- code

_SKIP_OPS = frozenset({"NOP", "CACHE", "RESUME", "EXTENDED_ARG", "PRECALL"})
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_FREE_OPS = frozenset({"LOAD_DEREF", "LOAD_CLASSDEREF"})
_ATTR_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
# a name used only as the receiver of one of these calls is written to, not read: `calls.append(x)`
SINK_METHODS = frozenset({
    "append", "appendleft", "extend", "extendleft", "add", "discard", "insert", "update", "clear",
    "write", "writelines", "put", "put_nowait", "send", "debug", "info", "warning", "warn", "error",
    "exception", "critical", "log", "flush",
})
_code_cache: dict[int, tuple[types.CodeType, str, tuple, frozenset]] = {}


_WRITE = "[]="    # marks a name used only as the container of a subscript write
_KEY_LOADS = frozenset({"LOAD_CONST", "LOAD_FAST", "LOAD_GLOBAL", "LOAD_DEREF", "LOAD_NAME"})


def _subscript_writes(instructions: list) -> set[int]:
    """Positions of name loads that only serve a subscript write: `X[k] = v` (load X, load k,
    STORE_SUBSCR) and `X[k] += v` (load X, load k, COPY, COPY, BINARY_SUBSCR ... STORE_SUBSCR).
    `counter["runs"] += 1` writes to counter; it does not make counter an input. Patterns of
    other bytecode simply do not match: the name then counts as read (safe)."""
    found = set()
    ops = [ins.opname for ins in instructions]
    for i, op in enumerate(ops):
        if op not in _GLOBAL_OPS and op not in _FREE_OPS:
            continue
        # the key: exactly one load, then attribute loads (`k`, `k.x`); in `d[k] = a` the value `a`
        # comes first and is followed by two loads, so it never matches
        j = i + 1
        if j >= len(ops) or ops[j] not in _KEY_LOADS:
            continue
        j += 1
        while j < len(ops) and ops[j] == "LOAD_ATTR":
            j += 1
        if ops[j:j + 1] == ["STORE_SUBSCR"] or ops[j:j + 3] == ["COPY", "COPY", "BINARY_SUBSCR"]:
            found.add(i)
    return found


def _const_text(c: Any, doc: bool) -> str:
    if isinstance(c, types.CodeType):
        return "code:" + code_fingerprint(c)
    if isinstance(c, (frozenset, set)):
        return "{" + ",".join(sorted(_const_text(i, False) for i in c)) + "}"
    if isinstance(c, tuple):
        return "(" + ",".join(_const_text(i, False) for i in c) + ")"
    if doc:
        return "doc"
    return f"{type(c).__name__}:{c!r}"


def _has_docstring(code: types.CodeType) -> bool:
    # functions keep their docstring as the first constant; CO_NOFREE etc. do not tell, the shape does
    return bool(code.co_consts) and isinstance(code.co_consts[0], str) and code.co_name not in ("<module>", "<lambda>")


def _analyse(code: types.CodeType) -> tuple[str, tuple, frozenset]:
    cached = _code_cache.get(id(code))
    if cached is not None and cached[0] is code:
        return cached[1], cached[2], cached[3]
    doc_const = code.co_consts[0] if _has_docstring(code) else None
    parts: list[str] = [PY_TAG, code.co_name, str(code.co_argcount), str(code.co_kwonlyargcount),
                        str(code.co_posonlyargcount), ",".join(code.co_varnames), ",".join(code.co_freevars),
                        str(code.co_flags & 0x0F)]
    names: list[tuple[str, ...]] = []
    instructions = [ins for ins in dis.get_instructions(code) if ins.opname not in _SKIP_OPS]
    kept = [ins.offset for ins in instructions]
    written = _subscript_writes(instructions)
    free_reads: set[str] = set()
    chain: list[str] | None = None
    free: str | None = None
    for i, ins in enumerate(instructions):
        op = ins.opname
        if free is not None and not (op in _ATTR_OPS and ins.argval in SINK_METHODS):
            free_reads.add(free)
        free = ins.argval if op in _FREE_OPS and i not in written else None
        if op in _GLOBAL_OPS:
            if chain:
                names.append(tuple(chain))
            chain = [ins.argval, _WRITE] if i in written else [ins.argval]
        elif op in _ATTR_OPS and chain is not None:
            chain.append(ins.argval)
        elif chain is not None:
            names.append(tuple(chain))
            chain = None
        if ins.opcode in dis.hasjrel or ins.opcode in dis.hasjabs:
            arg = f"->{bisect.bisect_left(kept, ins.argval)}"
        elif ins.opcode in dis.hasconst:
            arg = _const_text(ins.argval, doc_const is not None and ins.argval is doc_const)
        else:
            arg = str(ins.argrepr)
        parts.append(f"{op} {arg}")
    if chain:
        names.append(tuple(chain))
    if free is not None:
        free_reads.add(free)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _, nested_names, nested_free = _analyse(c)
            names.extend(nested_names)
            free_reads.update(nested_free)
    fp = hash_bytes("\n".join(parts).encode())
    # a name the code assigns (`global n; n += 1`, `nonlocal`) is the rule's own state, not an input
    stored = {ins.argval for ins in instructions if ins.opname in ("STORE_GLOBAL", "STORE_DEREF")}
    uniq = tuple(n for n in dict.fromkeys(names)
                 if not (len(n) == 2 and (n[1] in SINK_METHODS or n[1] == _WRITE)) and n[0] not in stored)
    result = (fp, uniq, frozenset(free_reads - stored))
    _code_cache[id(code)] = (code, *result)
    return result


def code_fingerprint(code: types.CodeType) -> str:
    return _analyse(code)[0]


def global_names(code: types.CodeType) -> tuple[tuple[str, ...], ...]:
    """Global names a code object (and the code nested in it) reads, each with the attribute chain
    read from it (`np.linalg.norm` -> ('np', 'linalg', 'norm')). A name only written to through a
    sink method (`calls.append(x)`) is not read."""
    return _analyse(code)[1]


def free_reads(code: types.CodeType) -> frozenset[str]:
    """Closure variables the code reads (not those only written to through a sink method)."""
    return _analyse(code)[2]
