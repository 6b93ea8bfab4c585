"""End to end: what re-runs after which edit. Every value is checked against the shared oracle."""
from __future__ import annotations

import textwrap

import pytest

import nbbuild
from oracle import from_scratch

PIPELINE = """
@b.rule
def raw():
    calls.append("raw")
    return [int(v) for v in open(DATA).read().split()]

@b.rule
def clean():
    calls.append("clean")
    return sorted(v for v in raw() if v >= 0)

@b.rule
def model():
    calls.append("model")
    xs = clean()
    return sum(xs) / len(xs)
"""


@pytest.fixture
def notebook(tmp_path, calls):
    """A pipeline defined as a notebook defines it: source executed in a namespace."""
    data = tmp_path / "data.txt"
    data.write_text("3 1 -2 5")
    b = nbbuild.Build(tmp_path / "store", workers=2)
    ns = {"b": b, "calls": calls, "DATA": str(data), "nbbuild": nbbuild}

    class NB:
        def run(self, src):
            exec(textwrap.dedent(src), ns)

        def build(self, name="model"):
            calls.clear()
            value = ns[name]()
            ran = len(calls)
            assert value == from_scratch(ns[name].task())
            del calls[ran:]   # the oracle's own evaluation is not a build's run
            return value

    nb = NB()
    nb.ns, nb.b, nb.data = ns, b, data
    nb.run(PIPELINE)
    yield nb
    b.close()


def test_nothing_reruns_when_nothing_changed(notebook, calls):
    assert notebook.build() == 3
    assert calls == ["model", "clean", "raw"]
    notebook.build()
    assert calls == []


def test_early_cutoff_a_rerun_with_an_equal_value_spares_dependents(notebook, calls):
    notebook.build()
    notebook.data.write_text("5 1 3 -7")        # raw changes, clean's value does not
    notebook.build()
    assert calls == ["raw", "clean"]


def test_a_comment_or_formatting_edit_runs_nothing(notebook, calls):
    notebook.build()
    notebook.run(PIPELINE.replace("    xs = clean()", "    # the cleaned data\n\n    xs = (clean())"))
    notebook.build()
    assert calls == []


def test_a_code_edit_reruns_that_rule_and_what_its_value_changes(notebook, calls):
    notebook.build()
    notebook.run(PIPELINE.replace("v >= 0", "v > 1"))
    assert notebook.build() == 4
    assert calls == ["clean", "model"]


def test_reverting_an_edit_restores_the_old_values_without_running(notebook, calls):
    notebook.build()
    notebook.run(PIPELINE.replace("v >= 0", "v > 1"))
    notebook.build()
    notebook.run(PIPELINE)
    assert notebook.build() == 3
    assert calls == []
    assert sorted(notebook.b.report.constructed) == ["clean()", "model()"]


def test_a_changed_helper_reruns_every_rule_that_reaches_it(notebook, calls):
    notebook.run("def keep(v):\n    return v >= 0\n")
    notebook.run(PIPELINE.replace("if v >= 0", "if keep(v)"))
    notebook.build()
    notebook.run("def keep(v):\n    return v > 2\n")
    assert notebook.build() == 4
    assert calls == ["clean", "model"]


def test_a_changed_plain_global_reruns_its_readers(notebook, calls):
    notebook.ns["cut"] = 0
    notebook.run(PIPELINE.replace("v >= 0", "v >= cut"))
    notebook.build()
    notebook.ns["cut"] = 0
    notebook.build()
    assert calls == []
    notebook.ns["cut"] = 4
    assert notebook.build() == 5
    assert calls == ["clean", "model"]


def test_parametric_rules_are_tasks_per_argument(b, calls):
    @b.rule
    def power(x, n=2):
        calls.append((x, n))
        return x ** n

    @b.rule
    def total(n):
        return sum(power(x, n) for x in range(4))

    assert total(2) == 14 and total(3) == 36
    assert total(2) == 14
    assert sorted(calls) == sorted([(x, n) for n in (2, 3) for x in range(4)])


def test_verifying_needs_hashes_not_values(notebook, calls):
    """Up-to-date dependencies are neither loaded nor re-run when their values were evicted."""
    notebook.build()
    store = notebook.b.store
    raw_hash = store.traces(notebook.ns["raw"].task().key)[0].result
    clean_hash = store.traces(notebook.ns["clean"].task().key)[0].result
    store.delete_value(raw_hash)
    store.delete_value(clean_hash)
    notebook.b.forget()    # as in a new process: nothing in memory
    assert notebook.b.why(notebook.ns["clean"].task()) == (
        "clean() is up to date, but its value is no longer stored: it runs again when needed")
    assert notebook.b.why(notebook.ns["model"].task()) == "model() is up to date"
    assert notebook.build() == 3
    assert calls == []
    # now model must run, so clean's value is needed: clean runs, raw's value is not needed again...
    notebook.run(PIPELINE.replace("sum(xs) / len(xs)", "max(xs)"))
    assert notebook.build() == 5
    assert calls == ["model", "clean", "raw"]   # ...but clean's body asks for raw, which was evicted too


def test_an_evicted_value_reruns_only_its_task(notebook, calls):
    notebook.build()
    store = notebook.b.store
    store.delete_value(store.traces(notebook.ns["clean"].task().key)[0].result)
    notebook.b.forget()    # as in a new process: nothing in memory
    notebook.run(PIPELINE.replace("sum(xs) / len(xs)", "max(xs)"))
    assert notebook.build() == 5
    assert calls == ["model", "clean"]


def test_a_dependency_whose_signature_changed_is_no_failure(b, calls):
    ns = {"b": b, "calls": calls}
    exec("@b.rule\ndef part(x):\n    calls.append('part')\n    return x * 2\n"
         "@b.rule\ndef whole():\n    calls.append('whole')\n    return part(1)\n", ns)
    assert ns["whole"]() == 2
    exec("@b.rule\ndef part(x, factor=10):\n    calls.append('part')\n    return x * factor\n", ns)
    calls.clear()
    assert ns["whole"]() == 10       # whole's old trace names part(1) with arguments part no longer takes
    assert calls == ["whole", "part"]
    assert b.report.failed == [] and b.report.executed == ["part(1)", "whole()"]


RUNS = 0


def test_rules_that_count_their_own_runs_are_not_rerun_by_it(b):
    counter = {"dict": 0}
    runs = 0

    @b.rule
    def with_global():
        global RUNS
        RUNS += 1
        return "g"

    @b.rule
    def with_dict():
        counter["dict"] += 1
        return "d"

    @b.rule
    def with_nonlocal():
        nonlocal runs
        runs += 1
        return "n"

    for _ in range(3):
        assert b.build(with_global, with_dict, with_nonlocal) == ["g", "d", "n"]
    assert (RUNS, counter["dict"], runs) == (1, 1, 1)
