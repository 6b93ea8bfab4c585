"""The Build facade: the public API, the report, `why`, policies and errors."""
from __future__ import annotations

import threading
import time

import pytest

import nbbuild
from oracle import from_scratch


def test_the_public_api_as_designed(tmp_path, calls):
    (tmp_path / "a.txt").write_text("one two three two")
    (tmp_path / "b.txt").write_text("four")
    with nbbuild.Build(tmp_path / "store", quota="2 GB", workers=4) as b:
        @b.rule
        def words(path):
            calls.append("words")
            return open(nbbuild.file(path)).read().split()

        @b.rule
        def count(path):
            calls.append("count")
            return len(words(path))

        a, bb = str(tmp_path / "a.txt"), str(tmp_path / "b.txt")
        assert count(a) == 4
        assert calls == ["count", "words"]
        t = count.task(a)
        assert repr(t) == f"count({a!r})"
        assert b.build(t, count.task(bb)) == [4, 1]
        assert b.report.reused == [f"words({a!r})", f"count({a!r})"] or sorted(b.report.reused) == sorted(
            [f"words({a!r})", f"count({a!r})"])
        assert sorted(b.report.executed) == [f"count({bb!r})", f"words({bb!r})"]
        assert b.why(t) == f"count({a!r}) is up to date"
        stats = b.store.stats()
        assert {"size_bytes", "quota_bytes", "values", "traces", "hits", "misses", "evictions"} <= set(stats)
        assert stats["quota_bytes"] == 2_000_000_000 and stats["values"] >= 3 and stats["traces"] == 4
        assert stats["hits"] == 2 and stats["misses"] == 4


def test_rule_decorator_forms_and_names(b):
    @b.rule(policy="memory", name="renamed")
    def original(x):
        return x

    assert original.name == "renamed" and original.policy == "memory"
    assert b.rules["renamed"] is original
    assert repr(original.task(3)) == "renamed(3)"


def test_targets_may_be_rules_or_names_without_arguments(b):
    @b.rule
    def answer():
        return 42

    assert b.build(answer, "answer", answer.task()) == [42, 42, 42]
    with pytest.raises(nbbuild.UnknownTargetError, match="no rule named 'nope'"):
        b.build("nope")


def test_arguments_are_normalised_so_equal_calls_are_one_task(b, calls):
    @b.rule
    def scaled(x, factor=2, *, offset=0):
        calls.append((x, factor, offset))
        return x * factor + offset

    assert scaled.task(1) == scaled.task(1, 2) == scaled.task(x=1, factor=2)
    assert scaled.task(1) != scaled.task(1, 3)
    assert repr(scaled.task(1)) == "scaled(1)"
    assert repr(scaled.task(1, 3, offset=4)) == "scaled(1, 3, offset=4)"
    assert scaled(1) == 2 and scaled(x=1, factor=2) == 2
    assert calls == [(1, 2, 0)]


def test_malformed_rules_and_calls_give_one_clear_line(b):
    with pytest.raises(nbbuild.RuleError, match="not one of persist, memory, none"):
        b.rule(policy="sometimes")(lambda: 1)
    with pytest.raises(nbbuild.RuleError, match="not a Python identifier"):
        b.rule(name="bad name")(lambda: 1)
    with pytest.raises(nbbuild.RuleError, match="needs a function"):
        b.rule(3)

    @b.rule
    def two(x, y):
        return x + y

    with pytest.raises(nbbuild.RuleError) as info:
        two(1)
    assert "two(x, y)" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(nbbuild.RuleError, match="picklable"):
        two(threading.Lock(), 1)
    with pytest.raises(nbbuild.RuleError, match="workers"):
        nbbuild.Build(b.store.path, workers=0)
    with pytest.raises(nbbuild.RuleError, match="not understood"):
        nbbuild.Build(b.store.path, quota="lots")


def test_a_failing_rule_names_the_task_and_the_chain_that_needed_it(b, calls):
    @b.rule
    def bad(x):
        calls.append("bad")
        return 1 / x

    @b.rule
    def middle(x):
        return bad(x) + 1

    @b.rule
    def top(x):
        return middle(x) * 2

    with pytest.raises(nbbuild.BuildError) as info:
        top(0)
    err = info.value
    assert err.task == bad.task(0)
    assert err.chain == [top.task(0), middle.task(0), bad.task(0)]
    assert isinstance(err.__cause__, ZeroDivisionError)
    assert "bad(0) failed: ZeroDivisionError: division by zero" in str(err)
    assert "top(0) → middle(0) → bad(0)" in str(err) and "\n" not in str(err)
    assert b.report.failed == ["bad(0)"] and b.report.skipped == ["middle(0)", "top(0)"]
    assert b.store.traces(top.task(0).key) == []


def test_other_targets_finish_and_are_stored_when_one_fails(b, calls):
    @b.rule
    def item(x):
        calls.append(x)
        if x == "bad":
            raise ValueError("no good")
        return x.upper()

    with pytest.raises(nbbuild.BuildError) as info:
        b.build(item.task("a"), item.task("bad"), item.task("b"))
    assert sorted(calls) == ["a", "b", "bad"]
    assert [e.task for e in info.value.errors] == [item.task("bad")]
    calls.clear()
    assert b.build(item.task("a"), item.task("b")) == ["A", "B"]
    assert calls == []


def test_a_failed_run_keeps_the_previous_value_and_trace(tmp_path, calls):
    data = tmp_path / "n.txt"
    data.write_text("2")
    with nbbuild.Build(tmp_path / "store", workers=1) as b:
        @b.rule
        def inverse():
            calls.append("inverse")
            return 1 / int(open(data).read())

        assert inverse() == 0.5
        traces_before = b.store.traces(inverse.task().key)
        data.write_text("0")
        with pytest.raises(nbbuild.BuildError):
            inverse()
        assert b.store.traces(inverse.task().key) == traces_before
        data.write_text("2")
        calls.clear()
        assert inverse() == 0.5
        assert calls == []  # the trace of the good run is intact: restored, not run


def test_an_unserializable_value_is_used_not_stored_and_named(b, calls):
    @b.rule
    def lock():
        calls.append("lock")
        return threading.Lock()

    @b.rule
    def uses():
        calls.append("uses")
        return type(lock()).__name__

    assert uses() == "lock"
    assert b.report.unstored == ["lock()"]
    assert "cannot be pickled" in b.report.tasks[0].unstored or "cannot be pickled" in b.report.tasks[1].unstored
    assert "not stored: lock()" in str(b.report)
    assert b.store.stats()["values"] == 1   # uses() only
    calls.clear()
    assert uses() == "lock"
    assert calls == []   # reused in this process from memory


def test_policy_memory_reuses_in_process_only(tmp_path, calls):
    def define(b):
        @b.rule(policy="memory")
        def cached():
            calls.append("cached")
            return [1]
        return cached

    with nbbuild.Build(tmp_path, workers=1) as b:
        cached = define(b)
        cached(), cached()
        assert calls == ["cached"]
        assert b.store.stats()["values"] == 0
    with nbbuild.Build(tmp_path, workers=1) as b:
        define(b)()
        assert calls == ["cached", "cached"]


def test_policy_none_runs_every_build_but_once_per_build(b, calls):
    @b.rule(policy="none")
    def now():
        calls.append("now")
        return 7

    @b.rule
    def twice():
        return now() + now()

    @b.rule
    def again():
        return now()

    assert b.build(twice, again) == [14, 7]
    assert calls == ["now"]
    b.build(twice)
    assert calls == ["now", "now"]
    assert b.why(twice.task()) == (
        "twice() is stale: dependency now() is stale (its policy is 'none': it runs every build)")


def test_saved_seconds_counts_the_time_reuse_saved(b):
    @b.rule
    def slow():
        time.sleep(0.2)
        return 1

    slow()
    assert b.report.saved_seconds == 0 and b.report.seconds >= 0.2
    ran = b.report.tasks[0].seconds
    slow()
    assert b.report.tasks[0].outcome == "verified"
    assert b.report.saved_seconds == pytest.approx(ran)      # what the body took when it ran


def test_why_says_what_changed(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("1 2 3")
    ns = {"nbbuild": nbbuild, "DATA": str(data), "threshold": 1}
    with nbbuild.Build(tmp_path / "store", workers=1) as b:
        ns["b"] = b
        exec(
            "def helper(xs):\n    return [x for x in xs if x > threshold]\n"
            "@b.rule\ndef raw():\n    return [int(v) for v in open(DATA).read().split()]\n"
            "@b.rule\ndef clean():\n    return helper(raw())\n", ns)
        clean = ns["clean"]
        assert b.why(clean.task()) == "clean() is stale: never built"
        assert clean() == [2, 3]
        assert b.why(clean.task()) == "clean() is up to date"
        data.write_text("1 2 3 4")
        assert b.why(clean.task()) == "clean() is stale: dependency raw() is stale (file data.txt changed)" \
            or b.why(clean.task()).endswith("(file " + str(data) + " changed)")
        clean()
        ns["threshold"] = 2
        assert b.why(clean.task()) == "clean() is stale: global threshold changed"
        clean()
        exec("def helper(xs):\n    return [x for x in xs if x >= threshold]\n", ns)
        assert b.why(clean.task()) == "clean() is stale: function helper changed"
        clean()
        exec("@b.rule\ndef clean():\n    # only a comment\n    return helper(raw())\n", ns)
        assert b.why(ns["clean"].task()) == "clean() is up to date"
        exec("@b.rule\ndef clean():\n    return helper(raw())[:1]\n", ns)
        assert b.why(ns["clean"].task()) == "clean() is stale: code of clean changed"
        data.unlink()
        assert "is missing" in b.why(ns["raw"].task())


def test_a_value_changed_in_place_is_not_served(b, calls):
    @b.rule
    def items():
        calls.append("items")
        return [1, 2, 3]

    got = items()
    got.append(99)          # the user mutates the value the build handed out
    assert items() == [1, 2, 3]
    assert calls == ["items"]   # reloaded from the store, not re-run


def test_building_inside_a_rule_is_a_tracked_fetch(b):
    @b.rule
    def base():
        return 5

    @b.rule
    def outer():
        return b.build(base)[0] + 1

    assert outer() == 6
    assert [k for g in b.store.traces(outer.task().key)[0].deps for k, _ in g] == [base.task().key]
    assert from_scratch(outer.task()) == 6


def test_a_task_of_a_redefined_rule_is_refused(b):
    @b.rule
    def r():
        return 1

    old = r.task()

    @b.rule  # noqa: F811 - redefining is what a re-run notebook cell does
    def r():
        return 2

    with pytest.raises(nbbuild.RuleError, match="redefined"):
        b.build(old)
    assert r() == 2


def test_a_tasks_time_excludes_waiting_for_its_dependencies(b):
    @b.rule
    def slow():
        time.sleep(0.2)
        return 1

    @b.rule
    def parent():
        return slow() + 1

    parent()
    seconds = {t.task: t.seconds for t in b.report.tasks}
    # parent() waited at least slow()'s 0.2 s; its own work takes microseconds (half of what slow()
    # took leaves room for a busy machine, and still fails a time that counts the wait)
    assert seconds["slow()"] >= 0.2 and seconds["parent()"] < seconds["slow()"] / 2
    parent()
    assert b.report.saved_seconds == pytest.approx(seconds["slow()"] + seconds["parent()"])


def test_values_kept_in_memory_stay_within_their_bound(b, monkeypatch, calls):
    monkeypatch.setattr("nbbuild.store.memory.MEMORY_BYTES", 50_000)

    @b.rule
    def big(i):
        calls.append(i)
        return bytes([i]) * 20_000

    b.build(*[big.task(i) for i in range(10)])
    assert b.memory.bytes <= 50_000 and len(b.memory.values) <= 3
    calls.clear()
    assert b.build(big.task(0)) == [bytes([0]) * 20_000]   # forgotten in memory, loaded from the store
    assert calls == []


def test_calling_rules_from_a_thread_a_rule_started_says_why_it_waits(b, monkeypatch, caplog):
    monkeypatch.setattr("nbbuild.build._PATIENCE", 0.2)

    @b.rule
    def inner():
        return 1

    @b.rule
    def outer():
        result = []
        t = threading.Thread(target=lambda: result.append(inner()))
        t.start()
        t.join(timeout=1.0)              # the thread waits for this very build: it cannot finish
        return t.is_alive()

    with caplog.at_level("WARNING", logger="nbbuild"):
        assert outer() is True
    assert "a rule that calls rules from a thread it started waits forever" in caplog.text


def test_a_task_of_another_build_is_refused(b, tmp_path):
    with nbbuild.Build(tmp_path / "other") as other:
        @other.rule
        def elsewhere():
            return 1

        with pytest.raises(nbbuild.RuleError, match="another Build"):
            b.build(elsewhere.task())


def test_force_runs_the_targets_again_but_not_their_dependencies(b, calls):
    @b.rule
    def base():
        calls.append("base")
        return 1

    @b.rule
    def top():
        calls.append("top")
        return base() + 1

    top()
    calls.clear()
    assert b.build(top, force=True) == [2]
    assert calls == ["top"] and b.report.executed == ["top()"]
    calls.clear()
    top()
    assert calls == []


def test_plan_lists_what_would_run_and_why_without_running(tmp_path, calls):
    data = tmp_path / "d.txt"
    data.write_text("1")
    with nbbuild.Build(tmp_path / "s") as b:
        @b.rule
        def raw():
            calls.append("raw")
            return int(open(data).read())

        @b.rule
        def double():
            calls.append("double")
            return raw() * 2

        @b.rule
        def other():
            return 0

        # never built: its dependencies are discovered when it runs, so only it can be named
        assert b.plan(double) == [("double()", "never built")]
        assert calls == []
        b.build(double, other)
        assert b.plan(double, other) == []
        data.write_text("2")
        changed = f"file {data} changed"
        assert b.plan(double) == [("raw()", changed), ("double()", f"dependency raw() is stale ({changed})")]
        assert calls == ["double", "raw"]


def test_an_attachment_comes_back_with_the_reused_value_and_stays_out_of_its_hash(store_dir, calls):
    from nbbuild.engine.trace import attach

    shown = {"text": "first"}

    def make(policy):
        b = nbbuild.Build(store_dir, workers=1)

        @b.rule(policy=policy)
        def raw():
            calls.append("raw")
            attach({"said": shown["text"]})
            return 1

        @b.rule(policy=policy)
        def total():
            calls.append("total")
            return raw() + 1

        return b, raw, total

    b, raw, total = make("persist")
    assert b.build(total) == [2]
    assert b.attachment(raw) == {"said": "first"}
    assert b.attachment(total) is None            # it attached nothing
    b.close()
    b, raw, total = make("persist")                # a new process: from the store
    assert b.build(total) == [2] and calls == ["total", "raw"]
    asked = []
    get_attachment = b.store.get_attachment
    b.store.get_attachment = lambda *a: asked.append(a) or get_attachment(*a)
    assert b.attachment(raw) == {"said": "first"} and b.attachment(raw) == {"said": "first"}
    assert len(asked) == 1                         # loaded once, then kept as a run's is
    del b.store.get_attachment
    shown["text"] = "second"                       # the body now attaches something else, same value
    assert b.build(raw, force=True) == [1]
    assert b.build(total) == [2]
    assert calls == ["total", "raw", "raw"]        # early cutoff: the attachment is not in the hash
    assert b.attachment(raw) == {"said": "second"}
    assert attach("outside a rule") is False
    b.close()


def test_an_attachment_of_a_memory_rule_lives_in_memory_only(store_dir, calls):
    from nbbuild.engine.trace import attach

    b = nbbuild.Build(store_dir, workers=1)

    @b.rule(policy="memory")
    def raw():
        calls.append("raw")
        attach(["shown"])
        return 1

    b.build(raw)
    b.build(raw)
    assert calls == ["raw"] and b.attachment(raw) == ["shown"]
    assert b.store.get_attachment(raw.task().key, b._clean.hashes[raw.task().key]) is None
    b.close()


class _CountsItsPickles:
    """Pickles differently each time, as a matplotlib Figure does."""

    def __init__(self) -> None:
        self.n = 0

    def __reduce__(self):
        self.n += 1
        return (_CountsItsPickles._restore, (self.n,))

    @staticmethod
    def _restore(n):
        obj = _CountsItsPickles()
        obj.n = n
        return obj


def test_a_value_that_pickles_differently_each_time_is_not_taken_for_changed_in_place(b, calls, caplog):
    @b.rule
    def figure():
        calls.append("figure")
        return _CountsItsPickles()

    first = b.build(figure)[0]
    assert b.build(figure)[0] is first and calls == ["figure"]
    assert "changed in place" not in caplog.text


class _PicklesOtherwiseOnceLoaded:
    """Pickles to other bytes once loaded than as built, the same each time after: as a set of
    strings does in another process (another hash seed), or a pandas frame whose blocks are laid
    out anew when loaded."""

    def __init__(self, origin: str = "built", items: list | None = None) -> None:
        self.origin, self.items = origin, items if items is not None else []

    def __reduce__(self):
        return _PicklesOtherwiseOnceLoaded, ("stored" if self.origin == "built" else "loaded", self.items)


def _box(build, calls):
    @build.rule
    def box():
        calls.append("box")
        return _PicklesOtherwiseOnceLoaded()
    return box


def test_a_value_that_pickles_otherwise_once_loaded_is_not_taken_for_changed_in_place(store_dir, calls, caplog):
    with nbbuild.Build(store_dir, workers=1) as b:
        b.build(_box(b, calls))
    with nbbuild.Build(store_dir, workers=1) as b:          # a restart: the value is loaded
        box = _box(b, calls)
        loaded = b.build(box)[0]
        assert loaded.origin == "stored" and b.build(box)[0] is loaded
        assert "changed in place" not in caplog.text
        loaded.items.append(1)                                # a change after it was loaded is one
        assert b.build(box)[0].items == [] and "changed in place" in caplog.text
    assert calls == ["box"]


def test_a_value_loaded_from_the_store_is_not_hashed_again_until_a_later_build_checks_it(store_dir, calls, caplog,
                                                                                          monkeypatch):
    """A restart's reused value is unpickled, never pickled back (its hash as loaded is taken only
    when a later build checks it for a change in place, and that check still finds one)."""
    from nbbuild.store import serialisation
    hashed = []
    value_hash = serialisation.value_hash
    monkeypatch.setattr(serialisation, "value_hash", lambda value: hashed.append(value) or value_hash(value))

    with nbbuild.Build(store_dir, workers=1) as b:
        b.build(_box(b, calls))
    with nbbuild.Build(store_dir, workers=1) as b:
        box = _box(b, calls)
        hashed.clear()
        loaded = b.build(box)[0]
        assert loaded.origin == "stored" and hashed == []
        assert b.build(box)[0] is loaded and "changed in place" not in caplog.text
        loaded.items.append(1)
        assert b.build(box)[0].items == [] and "changed in place" in caplog.text
    assert calls == ["box"]


def test_a_value_holding_classes_pickled_by_value_is_hashed_as_loaded_at_once(store_dir, calls, caplog, monkeypatch):
    """A class of the notebook's (pickled by value) is made anew at each load, and a second load
    may pickle otherwise than the first: such a value is hashed as loaded when it loads, so an
    unchanged one is never taken for changed in place."""
    from nbbuild.store import serialisation
    hashed = []
    value_hash = serialisation.value_hash
    monkeypatch.setattr(serialisation, "value_hash", lambda value: hashed.append(value) or value_hash(value))

    def define(build):
        class Local:        # not importable: cloudpickle pickles it by value
            def __init__(self):
                self.items = [1]

        @build.rule
        def box():
            calls.append("box")
            return {"made": Local()}
        return box

    with nbbuild.Build(store_dir, workers=1) as b:
        b.build(define(b))
    with nbbuild.Build(store_dir, workers=1) as b:
        box = define(b)
        hashed.clear()
        loaded = b.build(box)[0]
        assert any(v is loaded for v in hashed)
        assert b.build(box)[0] is loaded and "changed in place" not in caplog.text
    assert calls == ["box"]


def test_a_value_holding_functions_pickled_by_value_is_still_hashed_lazily(store_dir, calls, caplog, monkeypatch):
    """A function by value is not tracked as a class is: its value is hashed only when a later
    build checks it, and an unchanged one is not taken for changed in place."""
    from nbbuild.store import serialisation
    hashed = []
    value_hash = serialisation.value_hash
    monkeypatch.setattr(serialisation, "value_hash", lambda value: hashed.append(value) or value_hash(value))

    def define(build):
        scale = 3

        def times(x):       # a local function: cloudpickle pickles it by value
            return x * scale

        @build.rule
        def box():
            calls.append("box")
            return {"times": times, "items": [1]}
        return box

    with nbbuild.Build(store_dir, workers=1) as b:
        b.build(define(b))
    with nbbuild.Build(store_dir, workers=1) as b:
        box = define(b)
        hashed.clear()
        loaded = b.build(box)[0]
        assert hashed == [] and loaded["times"](2) == 6
        assert b.build(box)[0] is loaded and "changed in place" not in caplog.text
    assert calls == ["box"]


def test_a_loaded_value_changed_into_one_that_cannot_be_pickled_is_replaced_by_the_stored_one(store_dir, calls,
                                                                                              caplog):
    def define(build):
        @build.rule
        def items():
            calls.append("items")
            return [1, 2]
        return items

    with nbbuild.Build(store_dir, workers=1) as b:
        b.build(define(b))
    with nbbuild.Build(store_dir, workers=1) as b:
        items = define(b)
        b.build(items)[0].append(threading.Lock())        # loaded, then changed: no hash of it now
        assert b.build(items)[0] == [1, 2] and "changed in place" in caplog.text
    assert calls == ["items"]


def test_a_value_changed_in_place_after_it_was_built_is_replaced_by_the_stored_one(b, calls, caplog):
    @b.rule
    def items():
        calls.append("items")
        return [1, 2]

    b.build(items)[0].append(3)
    assert b.build(items)[0] == [1, 2] and calls == ["items"]
    assert "a value was changed in place after it was built" in caplog.text


def test_workers_for_one_build_is_an_argument_and_the_default_stays(tmp_path):
    import threading
    together = threading.Barrier(3, timeout=30)       # passes only when three bodies run at once
    with nbbuild.Build(tmp_path / "store", workers=1) as b:
        @b.rule(policy="none")
        def part(i):
            together.wait()
            return i

        assert b.build(*(part.task(i) for i in range(3)), workers=3) == [0, 1, 2]
        assert b.workers == 1
        with pytest.raises(nbbuild.RuleError, match="workers=0: give a whole number of at least 1"):
            b.build(part.task(0), workers=0)
        assert b.workers == 1
