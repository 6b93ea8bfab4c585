"""Environment variables are inputs by key: a rule re-runs when a variable it read changed (set,
unset, another value), and for nothing else; reading the whole environment depends on all of it."""
from __future__ import annotations

import os

import pytest

import nbbuild
from oracle import from_scratch
from test_kernel import RAN, SUMMARY, ok, ran
from test_magics import ip  # noqa: F401 - the IPython shell fixture, one definition

X, Y, OTHER = "NBT_ENV_X", "NBT_ENV_Y", "NBT_ENV_OTHER"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (X, Y, OTHER):
        monkeypatch.setenv(name, "")     # so that monkeypatch puts back what was there before, after the test
        monkeypatch.delenv(name)


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


# ---------------------------------------------------------------- variables a body sets
# What plain execution implies: a variable the body set is its own doing. The value it read before
# setting it is its input; the value it left is its effect, which a reused task leaves as well.

def configures(b, calls):
    """`import sklearn` in small: a library that sets a variable unless the user did."""
    @b.rule
    def setup():
        calls.append("setup")
        os.environ.setdefault(X, "1")
        return "hi"

    @b.rule
    def after():
        calls.append("after")
        return setup() + "!"

    return setup, after


def test_a_variable_the_body_sets_after_reading_it_does_not_make_it_stale(b, calls):
    setup, after = configures(b, calls)
    assert setup() == "hi" and calls == ["setup"] and os.environ[X] == "1"
    calls.clear()
    assert after() == "hi!" and calls == ["after"]      # the variable it set is not a change
    calls.clear()
    assert setup() == "hi" and calls == []
    assert b.why(setup.task()) == "setup() is up to date"


def test_a_reused_task_leaves_the_variables_it_set_as_its_run_did(store_dir, calls, monkeypatch):
    with nbbuild.Build(store_dir) as b:
        setup, after = configures(b, calls)
        assert after() == "hi!" and calls == ["after", "setup"]
    monkeypatch.delenv(X)               # a fresh process: as before the first run
    calls.clear()
    with nbbuild.Build(store_dir) as b:
        setup, after = configures(b, calls)
        assert b.why(setup.task()) == (f"setup() is up to date; environment variable {X} it set is unset: "
                                       "building it sets it again")
        assert setup() == "hi" and calls == [] and os.environ[X] == "1"
        assert b.why(setup.task()) == (f"setup() is up to date; its last build set environment variable {X} "
                                       "again as its run left it")
        assert after() == "hi!" and calls == []


def test_a_variable_set_outside_to_another_value_is_a_change(b, calls, monkeypatch):
    setup, after = configures(b, calls)
    after()
    monkeypatch.setenv(X, "1")          # the value it has: nothing changed
    assert b.why(setup.task()) == "setup() is up to date"
    monkeypatch.setenv(X, "2")
    assert b.why(setup.task()) == f"setup() is stale: environment variable {X} changed"
    calls.clear()
    assert after() == "hi!" and calls == ["setup"] and os.environ[X] == "2"     # setdefault kept it
    monkeypatch.delenv(X)               # as before its first run: that run's trace, and its effect
    calls.clear()
    assert after() == "hi!" and calls == [] and os.environ[X] == "1"


def test_a_task_that_unset_a_variable_unsets_it_when_reused(store_dir, calls, monkeypatch):
    def define(b):
        @b.rule
        def unsets():
            calls.append("unsets")
            return os.environ.pop(Y, "gone")
        return unsets

    monkeypatch.setenv(Y, "set")
    with nbbuild.Build(store_dir) as b:
        assert define(b)() == "set" and Y not in os.environ
        calls.clear()
        assert define(b)() == "set" and calls == []
    monkeypatch.setenv(Y, "set")
    with nbbuild.Build(store_dir) as b:
        assert define(b)() == "set" and calls == [] and Y not in os.environ


def test_a_body_that_reads_the_whole_environment_and_sets_a_variable(store_dir, calls, monkeypatch):
    def define(b):
        @b.rule
        def whole():
            calls.append("whole")
            seen = sorted(k for k in os.environ if k.startswith("NBT_ENV_"))
            os.environ[Y] = "mine"
            return seen, sorted(k for k in os.environ.copy() if k.startswith("NBT_ENV_"))
        return whole

    with nbbuild.Build(store_dir) as b:
        assert define(b)() == ([], [Y]) and calls == ["whole"]
        calls.clear()
        assert define(b)() == ([], [Y]) and calls == []
    monkeypatch.delenv(Y)
    with nbbuild.Build(store_dir) as b:
        assert define(b)() == ([], [Y]) and calls == [] and os.environ[Y] == "mine"
        monkeypatch.setenv(OTHER, "1")
        assert define(b)() == ([OTHER, Y], [OTHER, Y]) and calls == ["whole"]   # as its run here left it


def test_a_rule_cell_that_sets_a_variable_it_read(ip):  # noqa: F811
    ip.run_cell(f"%%rule\nimport os\ncalls.append('one')\nos.environ.setdefault('{X}', '1')\ngreeting = 'hi'\n")
    ip.run_cell("%%rule\ncalls.append('two')\nloud = greeting + '!'\n")
    assert ip.user_ns["calls"] == ["one", "two"] and os.environ[X] == "1"


SETS = f"%%rule\nimport os\nran('one')\nos.environ.setdefault('{X}', '1')\ngreeting = 'hi'\nprint(greeting)\n"
READS = "%%rule\nran('two')\nloud = greeting + '!'\nprint(loud)\n"


def printed(kc, code: str) -> list[str]:
    return [line for line in ok(kc, code).splitlines() if not SUMMARY.match(line)]


def test_in_a_kernel_a_cell_that_sets_a_variable_runs_once_and_sets_it_again_after_a_restart(tmp_path, kernel_in):
    for restart in (False, True):
        with kernel_in(tmp_path) as (km, kc):
            ok(kc, "%load_ext nbbuild")
            ok(kc, RAN + "import os")
            assert printed(kc, SETS) == ["hi"]
            assert printed(kc, READS) == ["hi!"]      # the first cell's output is not repeated here
            assert ran(tmp_path) == ["one", "two"]    # nor did its body run again, nor after a restart
            assert printed(kc, f"print(os.environ.get('{X}'))") == ["1"]
            if restart:
                assert printed(kc, "%nbbuild why greeting")[-1].endswith(
                    f"is up to date; its last build set environment variable {X} again as its run left it")


def test_a_dependency_met_again_leaves_a_variable_another_task_set_since(b, calls):
    @b.rule
    def first():
        calls.append("first")
        os.environ[X] = "first"
        return 1

    @b.rule
    def second():
        calls.append("second")
        os.environ[X] = "second"
        return 2

    @b.rule
    def uses_first():
        calls.append("uses_first")
        return first() + 1

    first(), second()
    assert os.environ[X] == "second"
    calls.clear()
    assert uses_first() == 2 and calls == ["uses_first"]
    assert os.environ[X] == "second"       # plain execution leaves the last write there
    assert first() == 1 and calls == ["uses_first"] and os.environ[X] == "first"   # a target sets it again
