"""Environment variables are inputs by key: a rule re-runs when a variable it read changed (set,
unset, another value), and for nothing else; reading the whole environment depends on all of it."""
from __future__ import annotations

import os

import pytest

import nbbuild
from oracle import from_scratch
from test_magics import ip  # noqa: F401 - the IPython shell fixture, one definition

X, Y, OTHER = "NBT_ENV_X", "NBT_ENV_Y", "NBT_ENV_OTHER"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (X, Y, OTHER):
        monkeypatch.delenv(name, raising=False)


def built(rule, calls):
    """Build the rule's task; check it against the oracle; the oracle's own run is not counted."""
    calls.clear()
    value = rule()
    ran = list(calls)
    assert value == from_scratch(rule.task())
    calls[:] = ran
    return value


def define(b, calls):
    @b.rule
    def reads_x():
        calls.append("reads_x")
        return os.environ.get(X)

    @b.rule
    def reads_y():
        calls.append("reads_y")
        return os.environ.get(Y, "none")

    @b.rule
    def pure():
        calls.append("pure")
        return 1

    @b.rule
    def top():
        calls.append("top")
        return (reads_x(), reads_y(), pure())

    return top, reads_x


def test_an_unrelated_variable_reruns_nothing(b, calls, monkeypatch):
    top, _ = define(b, calls)
    assert built(top, calls) == (None, "none", 1)
    assert calls == ["top", "reads_x", "reads_y", "pure"]
    monkeypatch.setenv(OTHER, "1")
    assert built(top, calls) == (None, "none", 1)
    assert calls == []


def test_a_changed_variable_reruns_exactly_its_reader_here_and_in_a_fresh_build(store_dir, calls, monkeypatch):
    with nbbuild.Build(store_dir) as b:
        top, _ = define(b, calls)
        built(top, calls)
        monkeypatch.setenv(X, "1")
        assert built(top, calls) == ("1", "none", 1)
        assert calls == ["reads_x", "top"]
        assert built(top, calls) == ("1", "none", 1)
        assert calls == []
    monkeypatch.setenv(X, "2")
    monkeypatch.setenv(OTHER, "2")
    with nbbuild.Build(store_dir) as b:
        top, _ = define(b, calls)
        assert built(top, calls) == ("2", "none", 1)
        assert calls == ["reads_x", "top"]
    with nbbuild.Build(store_dir) as b:
        top, _ = define(b, calls)
        assert built(top, calls) == ("2", "none", 1)
        assert calls == []


def test_absence_then_presence_then_absence(b, calls, monkeypatch):
    @b.rule
    def flag():
        calls.append("flag")
        try:
            return os.environ[X]
        except KeyError:
            return "unset"

    @b.rule
    def has():
        calls.append("has")
        return X in os.environ

    assert (built(flag, calls), built(has, calls)) == ("unset", False)
    monkeypatch.setenv(OTHER, "1")
    monkeypatch.setenv(X, "")           # set, though empty: not the same as unset
    assert (built(flag, calls), built(has, calls)) == ("", True)
    assert calls == ["has"]             # (calls is cleared per build: flag ran in the first one)
    monkeypatch.delenv(X)
    monkeypatch.setenv(OTHER, "2")
    assert (built(flag, calls), built(has, calls)) == ("unset", False)
    assert calls == []                  # constructive traces: both restored, nothing ran


def test_os_getenv_is_tracked(b, calls, monkeypatch):
    @b.rule
    def via_getenv():
        calls.append("via_getenv")
        return os.getenv(X, "default")

    assert built(via_getenv, calls) == "default"
    monkeypatch.setenv(X, "a")
    assert built(via_getenv, calls) == "a"
    assert calls == ["via_getenv"]


def test_a_body_that_imports_os_itself_is_tracked(b, calls, monkeypatch):
    @b.rule
    def local_import():
        import os as here
        calls.append("local_import")
        return here.environ.get(X, "default"), here.environb.get(Y.encode())

    assert built(local_import, calls) == ("default", None)
    monkeypatch.setenv(OTHER, "1")
    assert built(local_import, calls) == ("default", None)
    assert calls == []
    monkeypatch.setenv(X, "x")
    assert built(local_import, calls) == ("x", None)
    monkeypatch.setenv(Y, "y")
    assert built(local_import, calls) == ("x", b"y")
    assert calls == ["local_import"]


@pytest.mark.parametrize("how", ["dict(here.environ)", "here.environ.copy()", "list(here.environ.items())"])
def test_reading_the_whole_environment_depends_on_all_of_it(b, calls, monkeypatch, how):
    src = f"""
def whole():
    import os as here
    calls.append("whole")
    return sorted(k for k in dict({how}) if k.startswith("NBT_ENV_"))
"""
    ns = {"calls": calls}
    exec(src, ns)
    whole = b.rule(ns["whole"])
    assert built(whole, calls) == []
    monkeypatch.setenv(OTHER, "1")
    assert built(whole, calls) == [OTHER]
    assert calls == ["whole"]
    assert built(whole, calls) == [OTHER]
    assert calls == []
    assert b.why(whole.task()).endswith("is up to date")
    monkeypatch.setenv(OTHER, "2")
    assert b.why(whole.task()) == "whole() is stale: the environment changed"


def test_why_names_the_variable(b, calls, monkeypatch):
    top, reads_x = define(b, calls)
    built(top, calls)
    monkeypatch.setenv(OTHER, "1")
    assert b.why(reads_x.task()) == "reads_x() is up to date"
    monkeypatch.setenv(X, "1")
    assert b.why(reads_x.task()) == f"reads_x() is stale: environment variable {X} changed"
    assert b.why(top.task()).startswith("top() is stale: dependency reads_x() is stale")


def test_a_variable_the_body_sets_before_reading_it_is_not_an_input(b, calls, monkeypatch):
    @b.rule
    def sets():
        calls.append("sets")
        os.environ[Y] = "mine"
        value = os.environ[Y]
        del os.environ[Y]
        return value

    assert built(sets, calls) == "mine"
    monkeypatch.setenv(Y, "theirs")
    assert built(sets, calls) == "mine"
    assert calls == []


def test_reads_outside_a_rule_body_record_nothing(b, calls, monkeypatch):
    @b.rule
    def pure():
        calls.append("pure")
        return 1

    assert built(pure, calls) == 1
    os.environ.get(X)                    # the user's code, outside any body
    monkeypatch.setenv(X, "1")
    assert built(pure, calls) == 1
    assert calls == []


def test_a_rule_cell_that_imports_os_itself(ip, monkeypatch):  # noqa: F811
    cell = "%%rule\nimport os\ncalls.append('env')\nsetting = os.environ.get('" + X + "', 'unset')\n"
    ip.run_cell(cell)
    assert ip.user_ns["setting"] == "unset" and ip.user_ns["calls"] == ["env"]
    ip.user_ns["calls"].clear()
    monkeypatch.setenv(OTHER, "1")
    ip.run_cell(cell)
    assert ip.user_ns["calls"] == []
    monkeypatch.setenv(X, "on")
    ip.run_cell("%build setting")
    assert ip.user_ns["setting"] == "on" and ip.user_ns["calls"] == ["env"]


@pytest.mark.parametrize("where", ["processes"])
def test_a_body_run_in_a_worker_records_what_it_read_there(tmp_path, monkeypatch, where):
    log = str(tmp_path / "ran.txt")

    def define_far(b):
        @b.rule(executor=where)
        def far():
            import os as here
            with open(log, "a") as f:
                f.write("far\n")
            return here.environ.get("NBT_ENV_X", "unset")
        return far

    def ran():
        found = open(log).read().split() if os.path.exists(log) else []
        if found:
            os.remove(log)
        return found

    with nbbuild.Build(tmp_path / "store", workers=2) as b:
        far = define_far(b)
        assert far() == "unset" and ran() == ["far"]
        monkeypatch.setenv(OTHER, "1")
        assert far() == "unset" and ran() == []
    monkeypatch.setenv(X, "on")          # a fresh Build: its workers start with the kernel's environment
    with nbbuild.Build(tmp_path / "store", workers=2) as b:
        far = define_far(b)
        assert b.why(far.task()) == f"far() is stale: environment variable {X} changed"
        assert far() == "on" and ran() == ["far"]
        assert far() == "on" and ran() == []
        monkeypatch.setenv(X, "off")     # the same Build, its worker processes started before this
        assert far() == "off" and ran() == ["far"]
        monkeypatch.delenv(X)
        assert far() == "unset" and ran() == []      # as in the first Build: its trace is reused
