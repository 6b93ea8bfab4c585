"""A cell's outputs (names it binds at top level) and inputs (free names it reads)."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbbuild.errors import RuleError
from nbbuild.notebook.cellcode import compile_cell
from nbbuild.notebook.cells import analyse


def io(src):
    names = analyse(src)
    return list(names.inputs), list(names.outputs)


def test_assignments_and_reads():
    assert io("clean = raw.dropna()\nn = len(clean) * factor") == (["raw", "factor"], ["clean", "n"])


def test_a_name_bound_before_it_is_read_is_internal_but_read_first_is_an_input():
    assert io("x = 1\ny = x + 1") == ([], ["x", "y"])
    assert io("y = x + 1\nx = 2") == (["x"], ["y", "x"])


def test_augmented_assignment_reads_and_binds():
    assert io("total += 1") == (["total"], ["total"])


def test_del_reads_and_unbinds():
    assert io("tmp = big * 2\ndel tmp\nresult = 1") == (["big"], ["result"])
    assert io("del old") == (["old"], [])


def test_imports_defs_classes_and_targets_bind():
    src = """
import numpy as np
import os.path
from math import sqrt as root
def helper(v):
    return v * scale
class Model:
    k = 3
for i in range(3):
    pass
with open(path) as fh:
    text = fh.read()
"""
    inputs, outputs = io(src)
    assert outputs == ["np", "os", "root", "helper", "Model", "i", "fh", "text"]
    assert inputs == ["path", "scale"]


def test_functions_read_at_call_time_what_the_cell_does_not_bind():
    src = """
def f(x):
    return g(x) + threshold + local_later
def g(y):
    z = y + 1
    return z
local_later = 5
"""
    assert io(src) == (["threshold"], ["f", "g", "local_later"])


def test_a_function_declaring_global_binds_where_it_is_called_not_here():
    """config is bound when setup() runs, which the analysis cannot know (it is found when bound:
    test_versions' test_a_function_that_rebinds_a_global...)"""
    src = "def setup():\n    global config\n    config = load(source)\nsetup()"
    assert io(src) == (["load", "source"], ["setup"])


def test_comprehensions_read_their_first_iterable_here_and_bind_walrus_here():
    assert io("squares = [x * x for x in xs if x > cut]") == (["xs", "cut"], ["squares"])
    assert io("pairs = {k: v for k, v in table.items()}") == (["table"], ["pairs"])
    assert io("nested = [y for row in grid for y in row]") == (["grid"], ["nested"])
    # the walrus binds m while the comprehension runs, before hits is assigned
    assert io("hits = [m for w in words if (m := match(w))]\nlast = m") == (["words", "match"], ["m", "hits", "last"])


def test_lambdas_and_defaults():
    assert io("f = lambda v, k=base: v * k * rate") == (["base", "rate"], ["f"])


def test_class_bodies_run_now_methods_later():
    src = "class A(Base):\n    size = width * 2\n    def m(self):\n        return self.size + extra\n"
    assert io(src) == (["Base", "width", "extra"], ["A"])


def test_exception_names_do_not_outlive_their_handler():
    assert io("try:\n    v = risky()\nexcept ValueError as err:\n    v = None") == (["risky"], ["v"])


def test_match_patterns_bind():
    src = "match point:\n    case (x, y):\n        dist = x + y\n    case {'k': value, **rest}:\n        dist = value\n"
    inputs, outputs = io(src)
    assert inputs == ["point"] and set(outputs) == {"x", "y", "dist", "value", "rest"}


def test_builtins_and_ipython_names_are_not_inputs():
    src = "a = len(In) + sum(range(3))\nb = _ + _i3 + _12 + __\ndisplay(a)\nip = get_ipython()\nprint(Out)"
    assert io(src) == ([], ["a", "b", "ip"])


def test_a_syntax_error_is_one_clear_line():
    with pytest.raises(RuleError) as info:
        analyse("x = (1 +\n")
    assert "syntax error in the cell, line" in str(info.value) and "\n" not in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(alphabet="abxy_=+-*()[]{}:,.\n \t'\"0129lambdforinimport:=", max_size=60),
                 st.text(max_size=40)))
def test_any_text_gives_names_or_a_rule_error(text):
    try:
        names = analyse(text)
    except RuleError:
        return
    assert all(isinstance(n, str) for n in names.inputs + names.outputs)


@pytest.mark.parametrize("src", ["a = 1\x00", "x = " + "(" * 5000 + "1" + ")" * 5000, "y = " + "-" * 100000 + "1"])
def test_unreadable_cells_are_one_clear_line(src):
    with pytest.raises(RuleError) as info:
        analyse(src)
    assert "\n" not in str(info.value)


def test_annotations_are_read_where_the_function_is_defined():
    # CPython evaluates defaults first, then annotations
    assert io("def f(x: Frame, *, k: int = dflt) -> Result:\n    return x") == (["dflt", "Frame", "Result"], ["f"])


def test_a_star_import_is_refused_in_one_line():
    with pytest.raises(RuleError, match="import the names you use"):
        analyse("from math import *\ny = sqrt(2)")


@pytest.mark.parametrize("source, name", [
    ("import pandas as pd\ndf = pd.read_csv('x')\n", "df"),
    ("with open('f') as fh:\n    text = fh.read()\n", "text"),
    ("for i in range(3):\n    total = i\n", "total"),
    ("def helper():\n    inner = 1\n    return inner\n", "helper"),
    ("if True:\n    (n := 3)\nm = 1\n", "n"),
    ("x: int = 1\n", "x"),
    ("print('nothing bound')\n", None),
])
def test_the_default_rule_name_is_what_the_cell_assigns_first(source, name):
    assert analyse(source).default_name == name


DEFINES = """\
def make():
    def inner(): pass
    return inner
class Model:
    def fit(self): return [step for step in (1,)]
    class Part: pass
square = lambda x: x
"""


def _named(ns: dict) -> list[str]:
    made = (ns["make"], ns["make"](), ns["Model"], ns["Model"].fit, ns["Model"].Part, ns["square"])
    return [f"{v.__module__}.{v.__qualname__}" for v in made] + [re.sub(r"0x\w+", "0x?", repr(ns["make"]))]


def test_functions_and_classes_a_cell_defines_are_named_as_plain_execution_names_them():
    plain = {"__name__": "__main__"}
    exec(DEFINES, plain)
    namespace = {"__name__": "__main__"}
    fn = compile_cell(DEFINES, "f_1a2b", "<cell>", {}, analyse(DEFINES).outputs, namespace)
    assert _named(fn()) == _named(plain) == [
        "__main__.make", "__main__.make.<locals>.inner", "__main__.Model", "__main__.Model.fit",
        "__main__.Model.Part", "__main__.<lambda>", "<function make at 0x?>"]
    assert fn.__qualname__ == "f_1a2b" and fn()["Model"]().fit() == [1]


def test_a_cell_run_again_unchanged_is_compiled_once_and_an_edited_one_anew():
    """The rule's code is kept by everything it depends on (its source, name, file, the versions it
    fetches, its outputs): the same code object for a cell run again, so its fingerprint is
    computed once; any change among them compiles anew."""
    def make(source, fetched=None, namespace=None):
        namespace = namespace if namespace is not None else {"__name__": "__main__", "x": 2}
        return compile_cell(source, "f_cell", "<cell>", fetched or {}, analyse(source).outputs, namespace)

    first, again = make("y = x + 1"), make("y = x + 1", namespace={"__name__": "__main__", "x": 5})
    assert first is not again and first.__code__ is again.__code__
    assert first()["y"] == 3 and again()["y"] == 6        # each reads its own namespace
    edited = make("y = x + 10")
    assert edited.__code__ is not first.__code__ and edited()["y"] == 12
    fetching = make("y = x + 1", fetched={"x": "other"})
    assert fetching.__code__ is not first.__code__ and "__nbbuild_fetch__" in fetching.__code__.co_names
