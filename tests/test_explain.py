"""Explaining without running: each task's status, and what it read."""
from __future__ import annotations

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
