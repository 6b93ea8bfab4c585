"""Explaining without running: each task's status, and what it read."""
from __future__ import annotations

import sys

import nbbuild


def _pipeline(b, calls, tmp_path, fail):
    data = tmp_path / "data.csv"

    @b.rule
    def raw():
        calls.append("raw")
        return open(data).read().split(",")

    @b.rule
    def clean():
        calls.append("clean")
        if fail["clean"]:
            raise ValueError("bad row")
        return [int(v) for v in raw()]

    @b.rule
    def total():
        calls.append("total")
        return sum(clean())

    return raw, clean, total


def test_status_says_never_built_up_to_date_stale_and_failed_with_duration_and_size(tmp_path, calls):
    (tmp_path / "data.csv").write_text("1,2,3")
    fail = {"clean": False}
    with nbbuild.Build(tmp_path / "store", workers=1) as b:
        raw, clean, total = _pipeline(b, calls, tmp_path, fail)
        assert b.status(total).state == "never built"
        assert b.status(total).size is None and b.status(total).seconds is None
        b.build(total)
        st = b.status(clean)
        assert (st.task, st.state, st.reason) == ("clean()", "up to date", "up to date")
        assert st.seconds >= 0 and st.size > 0
        (tmp_path / "data.csv").write_text("1,2,x")
        assert b.status(raw).state == "stale"
        assert b.status(raw).reason == f"file {tmp_path / 'data.csv'} changed"
        assert b.status(total).reason.startswith("dependency clean() is stale")
        assert b.status(total).seconds is not None          # the last run's time: what a rebuild may cost
        fail["clean"] = True
        try:
            b.build(total)
        except nbbuild.BuildError:
            pass
        assert b.status(clean).state == "failed" and "bad row" in b.status(clean).reason
        assert b.status(total).state == "failed"
        fail["clean"] = False
        (tmp_path / "data.csv").write_text("1,2,3")
        b.build(total)
        assert [b.status(t).state for t in (raw, clean, total)] == ["up to date"] * 3
        # the failed build ran clean (it raised) and total (it needs clean); the last one nothing:
        # the first run's traces match again
        assert calls == ["total", "clean", "raw", "clean", "total"]


def test_status_says_not_stored_when_the_value_is_gone(tmp_path, calls):
    (tmp_path / "data.csv").write_text("1,2,3")
    with nbbuild.Build(tmp_path / "store", workers=1) as b:
        raw, clean, total = _pipeline(b, calls, tmp_path, {"clean": False})
        b.build(total)
        digest = b._clean.hashes[clean.task().key]
        b.forget()
        b.store.delete_value(digest)
        assert b.status(clean).state == "not stored"


def test_inputs_are_what_the_last_run_read(tmp_path, calls):
    (tmp_path / "data.csv").write_text("1,2,3")
    with nbbuild.Build(tmp_path / "store", workers=1) as b:
        raw, clean, total = _pipeline(b, calls, tmp_path, {"clean": False})
        assert b.inputs(total) == ([], [])
        b.build(total)
        assert b.inputs(total) == ([clean.task()], [])
        tasks, files = b.inputs(raw)
        assert tasks == [] and files == [str(tmp_path / "data.csv")]


def test_a_chain_ten_thousand_deep_explains_and_builds_with_the_default_recursion_limit(tmp_path, monkeypatch):
    depth = 10_000
    data = tmp_path / "bottom.txt"
    data.write_text("1")

    def refuse(limit):
        raise AssertionError(f"the recursion limit was set to {limit}")

    monkeypatch.setattr(sys, "setrecursionlimit", refuse)
    with nbbuild.Build(tmp_path / "store", workers=1) as b:
        @b.rule
        def chain(n):
            return int(data.read_text()) if n == 0 else chain(n - 1) + 1

        top = chain.task(depth)
        assert b.why(top) == "chain(10000) is stale: never built"
        assert chain(depth) == depth + 1
        assert b.why(top) == "chain(10000) is up to date"
        assert b.plan(top) == []

        data.write_text("2")
        why = b.why(top)
        assert why.startswith("chain(10000) is stale: dependency chain(9999) is stale (dependency chain(9998) is stale (")
        assert why.endswith("bottom.txt changed" + ")" * depth) and "dependency chain(0) is stale (file " in why
        assert b.status(top).state == "stale" and b.status(top).reason == why.partition(": ")[2]
        # (the plan would hold every task's reason, each those of all below it: 10,000 deep, that
        # is the square of the depth in text; a shorter stale chain is planned as deep as it goes)
        assert [task for task, _ in b.plan(chain.task(300))] == [f"chain({n})" for n in range(301)]
        assert chain(depth) == depth + 2
