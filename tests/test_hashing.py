"""Value and code fingerprints."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nbbuild.engine import arguments
from nbbuild.engine.code import code_fingerprint, free_reads, global_names
from nbbuild.store import serialisation


def _hash_in_fresh_process(expr: str, seed: str) -> str:
    code = f"from nbbuild.store import serialisation; print(serialisation.value_hash({expr}))"
    env = {**os.environ, "PYTHONHASHSEED": seed}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_serialize_round_trips_and_hashes_the_stored_bytes():
    value = {"a": [1, 2.5, None], "b": ("x", b"y"), "c": {3, 4}}
    blob, digest = serialisation.serialize(value)
    assert serialisation.deserialize(blob) == value
    assert digest == serialisation.serialize(value)[1]
    assert len(digest) == 32
    assert serialisation.value_hash([1, 2]) != serialisation.value_hash([1, 3])


def test_sets_hash_the_same_whatever_the_hash_seed():
    expr = "{'alpha', 'beta', 'gamma', 'delta', frozenset({'x', 'y', 'z'})}"
    assert _hash_in_fresh_process(expr, "1") == _hash_in_fresh_process(expr, "2") == _hash_in_fresh_process(expr, "3")


def test_numpy_arrays_round_trip_writable_and_hash_by_content():
    a = np.arange(1000, dtype=np.float64).reshape(10, 100)
    blob, digest = serialisation.serialize(a)
    back = serialisation.deserialize(blob)
    assert np.array_equal(back, a) and back.flags.writeable
    back[0, 0] = 5          # a loaded array behaves like a fresh one
    assert serialisation.value_hash(a.copy()) == digest
    assert serialisation.value_hash(a + 1) != digest


def test_an_unpicklable_value_is_reported_not_raised_as_something_else():
    import threading
    with pytest.raises(serialisation.UnserializableValue, match="lock"):
        serialisation.serialize(threading.Lock())


@pytest.mark.parametrize("args", [
    ((1, "a", 2.5, None, True), {}),
    (([1, [2]], {"k": (3,)}), {"x": {1, 2}}),
    ((b"bytes", frozenset({"a"}), float("inf")), {}),
])
def test_arguments_encode_canonically_and_decode_back(args):
    text = arguments.encode_args(args)
    assert arguments.decode_args(text) == args
    assert arguments.encode_args(arguments.decode_args(text)) == text


def test_int_float_and_bool_arguments_stay_distinct():
    assert len({arguments.encode_args((1,)), arguments.encode_args((1.0,)), arguments.encode_args((True,))}) == 3


def _code(src: str, name: str = "f"):
    ns: dict = {}
    exec(textwrap.dedent(src), ns)
    return ns[name].__code__


BASE = """
def f(x):
    y = x + 1
    if y > 2:
        return [i for i in range(y) if i in {"a", "b"}]
    return threshold * y
"""


@pytest.mark.parametrize("variant", [
    # comments, blank lines, formatting and docstrings do not count
    '''
def f(x):
    """Doc."""
    # a comment
    y = (x +
         1)

    if y > 2:   # trailing
        return [i for i in range(y)
                if i in {"b", "a"}]
    return threshold * y
''',
    "\n\n\n" + BASE,
])
def test_code_fingerprint_ignores_what_does_not_change_behaviour(variant):
    assert code_fingerprint(_code(variant)) == code_fingerprint(_code(BASE))


@pytest.mark.parametrize("variant", [
    BASE.replace("x + 1", "x + 2"),
    BASE.replace("y > 2", "y >= 2"),
    BASE.replace('"a", "b"', '"a", "c"'),
    BASE.replace("threshold * y", "threshold / y"),
])
def test_code_fingerprint_follows_real_edits(variant):
    assert code_fingerprint(_code(variant)) != code_fingerprint(_code(BASE))


def test_global_names_include_nested_code_and_attribute_chains():
    code = _code("""
def f(xs):
    return [np.linalg.norm(x) * scale for x in xs] + helper(xs)
""")
    names = global_names(code)
    assert ("np", "linalg", "norm") in names and ("scale",) in names and ("helper",) in names


def test_a_name_only_appended_to_is_not_read():
    code = _code("""
def f(x):
    calls.append("f")
    log.info("ran")
    return x + offset
""")
    assert [n[0] for n in global_names(code)] == ["offset"]


def test_closure_reads_exclude_sinks():
    def outer():
        calls, factor = [], 2

        def inner(x):
            calls.append(x)
            return x * factor
        return inner

    assert free_reads(outer().__code__) == {"factor"}


def test_state_a_rule_writes_is_not_read():
    code = _code("""
def f(k):
    global runs
    runs += 1
    counter["n"] += 1
    seen[k] = True
    return table[k] + offset
""")
    assert sorted(n[0] for n in global_names(code)) == ["offset", "table"]


def test_a_subscript_write_plus_a_read_is_a_read():
    code = _code("""
def f(k):
    cache[k] = 1
    return cache[k]
""")
    assert [n[0] for n in global_names(code)] == ["cache"]


def test_nonlocal_counters_are_state_not_inputs():
    def outer():
        runs, factor = 0, 3

        def inner(x):
            nonlocal runs
            runs += 1
            return x * factor
        return inner

    assert free_reads(outer().__code__) == {"factor"}


def test_a_value_stored_into_a_container_is_read():
    code = _code("""
def f(k):
    d[k] = a
    d2[k.x] = b.c
    return None
""")
    assert sorted(n[0] for n in global_names(code)) == ["a", "b"]
