"""What a code object does: its fingerprint, and the names it reads.

Contract:
- `code_fingerprint(code)` hashes what a code object does, not how it is written: its bytecode with
  line numbers, NOPs and docstrings removed, its constants and nested code objects, recursively.
  Comments, blank lines, formatting and docstrings do not change it; the Python version does
  (`PY_TAG` is part of it).
- `global_names(code)`: the global names it (and the code nested in it) reads, each with the
  attribute chain read from it; a name only written to (`calls.append(x)`, `d[k] = v`) is not read.
- `free_reads(code)`: the closure variables it reads.
Each code object is analysed once (cached by identity, the code object kept alive with its result).
"""
from __future__ import annotations

import bisect
import dis
import sys
import types
from typing import Any

from ..store.serialisation import hash_bytes

__all__ = ["code_fingerprint", "global_names", "free_reads", "PY_TAG", "SINK_METHODS"]

PY_TAG = f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}"

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
