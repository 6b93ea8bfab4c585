"""Files a rule writes are outputs (engine/outputs.py): stored with its value, counted against the quota,
and put back when the task is reused and the file is missing or differs, so that a later rule, or
another program, reads the bytes plain execution would have left there.

The oracle is plain execution (oracle.from_scratch): the rule's function run as plain Python
writes the files; their bytes are what a build must leave, whether it runs the rule or reuses it.
Rules are defined by functions of this module taking the Build, so that a fresh Build on the same
store (a new process, as far as the store can tell) gets the same rules.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import nbbuild
from nbbuild.engine.files import short_path
from oracle import from_scratch


def plain_bytes(task, paths) -> dict[str, bytes]:
    """What plain execution of the task leaves in `paths` (run in place, then read back)."""
    from_scratch(task)
    return {p: open(p, "rb").read() for p in paths}


def on_disk(paths) -> dict[str, bytes]:
    return {p: open(p, "rb").read() for p in paths}


def csv_rules(b, calls, folder):
    path = os.path.join(folder, "data", "sales.csv")

    @b.rule
    def sales(n):
        calls.append("sales")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pd.DataFrame({"store": range(n), "units": [i * 1.5 for i in range(n)]}).to_csv(path, index=False)
        return path

    @b.rule
    def total(n):
        calls.append("total")
        return float(pd.read_csv(sales(n))["units"].sum())      # reads the file sales wrote
    return sales, total, path


def test_a_csv_written_by_pandas_is_put_back_byte_for_byte_and_nothing_runs(store_dir, tmp_path, calls):
    with nbbuild.Build(store_dir) as b:
        sales, total, path = csv_rules(b, calls, str(tmp_path))
        assert total(100) == 7425.0
        expected = plain_bytes(sales.task(100), [path])
    calls.clear()
    os.remove(path)
    with nbbuild.Build(store_dir) as b:                         # a fresh Build on the same store
        sales, total, _ = csv_rules(b, calls, str(tmp_path))
        assert total(100) == 7425.0
        assert calls == []                                      # total read the file sales put back
        assert on_disk([path]) == expected
        assert b.report.restored == {"sales(100)": [path]}
        with open(path, "a") as f:                              # changed by hand: put back too
            f.write("99,1000.0\n")
        assert total(100) == 7425.0 and calls == []
        assert on_disk([path]) == expected
    os.remove(path)
    os.rmdir(os.path.dirname(path))                             # its folder too
    with nbbuild.Build(store_dir) as b:
        sales, total, _ = csv_rules(b, calls, str(tmp_path))
        assert total(100) == 7425.0 and calls == []
        assert on_disk([path]) == expected


def array_rules(b, calls, folder):
    small, large = os.path.join(folder, "small.npy"), os.path.join(folder, "large.npy")

    @b.rule
    def arrays(seed):
        calls.append("arrays")
        rng = np.random.default_rng(seed)
        np.save(small, rng.integers(0, 100, 10))
        np.save(large, rng.random(400_000))                     # 3.2 MB: a value file in the store
        return seed
    return arrays, small, large


def test_arrays_written_by_np_save_are_put_back(store_dir, tmp_path, calls):
    with nbbuild.Build(store_dir) as b:
        arrays, small, large = array_rules(b, calls, str(tmp_path))
        arrays(1)
        expected = plain_bytes(arrays.task(1), [small, large])
    calls.clear()
    os.remove(large)
    np.save(small, np.zeros(3))                                 # another array in its place
    with nbbuild.Build(store_dir) as b:
        arrays, _, _ = array_rules(b, calls, str(tmp_path))
        assert arrays(1) == 1 and calls == []
        assert on_disk([small, large]) == expected
        assert sorted(b.report.restored["arrays(1)"]) == sorted([small, large])


def figure_rules(b, calls, folder):
    png = os.path.join(folder, "plot.png")

    @b.rule
    def plot(slope):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        calls.append("plot")
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, slope])
        fig.savefig(png, metadata={"Software": None})           # no version string: same bytes every run
        plt.close(fig)
        return slope
    return plot, png


def test_a_figure_saved_by_matplotlib_is_put_back(store_dir, tmp_path, calls):
    with nbbuild.Build(store_dir) as b:
        plot, png = figure_rules(b, calls, str(tmp_path))
        plot(2)
        expected = on_disk([png])
    calls.clear()
    os.remove(png)
    with nbbuild.Build(store_dir) as b:
        plot, _ = figure_rules(b, calls, str(tmp_path))
        assert plot(2) == 2 and calls == []
        assert on_disk([png]) == expected
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_file_that_already_matches_is_left_alone(store_dir, tmp_path, calls):
    """Only what differs is written back: an equal file keeps its inode and mtime."""
    with nbbuild.Build(store_dir) as b:
        arrays, small, large = array_rules(b, calls, str(tmp_path))
        arrays(2)
    before = os.stat(large)
    os.remove(small)
    with nbbuild.Build(store_dir) as b:
        arrays, _, _ = array_rules(b, calls, str(tmp_path))
        arrays(2)
        assert calls == ["arrays"] and b.report.restored == {"arrays(2)": [small]}
    after = os.stat(large)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert os.path.exists(small)


def test_in_one_process_a_deleted_file_is_put_back_by_the_next_build(b, tmp_path, calls):
    """The tasks a process already verified are re-checked for the files they wrote too."""
    sales, total, path = csv_rules(b, calls, str(tmp_path))
    total(10)
    expected = on_disk([path])
    total(10)
    os.remove(path)
    assert total(10) == 67.5
    assert calls == ["total", "sales"]
    assert on_disk([path]) == expected
    assert b.report.restored == {"sales(10)": [path]}


def test_reverting_an_edit_puts_back_the_earlier_file(b, tmp_path, calls):
    """A constructive trace restores the file of the run it describes."""
    out = str(tmp_path / "out.txt")
    ns = {"b": b, "calls": calls, "out": out, "TEXT": "first"}
    src = '''
@b.rule
def write():
    calls.append("write")
    with open(out, "w") as f:
        f.write(TEXT)
'''
    exec(src, ns)
    ns["write"]()
    ns["TEXT"] = "second"
    ns["write"]()
    assert open(out).read() == "second"
    ns["TEXT"] = "first"
    ns["write"]()
    assert calls == ["write", "write"]
    assert open(out).read() == "first"
    assert b.report.constructed == ["write()"]


def test_a_task_whose_copy_was_evicted_runs_again_when_its_file_is_gone(store_dir, tmp_path, calls):
    with nbbuild.Build(store_dir) as b:
        arrays, small, large = array_rules(b, calls, str(tmp_path))
        arrays(3)
        expected = on_disk([small, large])
        copies = [copy for _, _, copy in b.store.traces(arrays.task(3).key)[0].outputs]
        b.store.delete_values(copies)      # as eviction does (its value stays)
    calls.clear()
    with nbbuild.Build(store_dir, quota="unlimited") as b:
        arrays, _, _ = array_rules(b, calls, str(tmp_path))
        arrays(3)
        assert calls == []                 # its files are there: nothing to put back
        os.remove(large)
        assert "no copy of it is stored" in b.why(arrays.task(3))
    with nbbuild.Build(store_dir, quota="unlimited") as b:
        arrays, _, _ = array_rules(b, calls, str(tmp_path))
        arrays(3)
        assert calls == ["arrays"]         # nothing to put it back from: it runs
        assert on_disk([small, large]) == expected


def subprocess_rules(b, calls, folder):
    out = os.path.join(folder, "made-by-child.txt")

    @b.rule
    def child(text, declare):
        calls.append("child")
        code = f"open({out!r}, 'w').write({text!r})"
        subprocess.run([sys.executable, "-c", code], check=True)
        if declare:
            nbbuild.output(out)
        return len(text)
    return child, out


def test_a_file_a_subprocess_writes_is_an_output_once_declared(store_dir, tmp_path, calls):
    with nbbuild.Build(store_dir) as b:
        child, out = subprocess_rules(b, calls, str(tmp_path))
        child("from the child", True)
        assert b.outputs(child.task("from the child", True)) == [out]
        child("not declared", False)
        assert b.outputs(child.task("not declared", False)) == []    # the hook cannot see it
    os.remove(out)
    calls.clear()
    with nbbuild.Build(store_dir) as b:
        child, _ = subprocess_rules(b, calls, str(tmp_path))
        child("from the child", True)
        assert calls == [] and open(out).read() == "from the child"


def test_output_outside_a_rule_is_a_one_line_error(tmp_path):
    with pytest.raises(nbbuild.OutsideRuleError) as info:
        nbbuild.output(tmp_path / "x.csv")
    assert isinstance(info.value, nbbuild.NbbuildError)
    assert "\n" not in str(info.value) and "inside a rule" in str(info.value)
    assert "output" in nbbuild.__all__ and "OutsideRuleError" in nbbuild.__all__


def test_the_files_copies_count_against_the_quota(store_dir, tmp_path, calls):
    with nbbuild.Build(store_dir, quota="unlimited") as b:
        empty = b.store.stats()["size_bytes"]
        arrays, small, large = array_rules(b, calls, str(tmp_path))
        arrays(4)                                                # its value is a small int
        stats = b.store.stats()
        assert stats["size_bytes"] - empty >= os.path.getsize(large)
        assert stats["value_files"] == 1                         # the large file's copy
        arrays(4)
        assert b.store.stats()["bytes_written"] == stats["bytes_written"]   # stored once


def test_why_names_the_files_put_back(b, tmp_path, calls):
    sales, total, path = csv_rules(b, calls, str(tmp_path))
    total(5)
    os.remove(path)
    assert b.why(sales.task(5)) == (f"sales(5) is up to date; file {short_path(path)} it wrote is missing: "
                                    "building it restores it from the store")
    total(5)
    assert b.why(sales.task(5)) == (f"sales(5) is up to date; its last build restored file {short_path(path)} "
                                    "from the store")
    assert b.why(total.task(5)) == "total(5) is up to date"       # the file is sales's, not total's


def test_a_file_moved_into_place_is_an_output_and_a_log_appended_to_is_not(b, tmp_path, calls):
    """An atomic save (write a temporary file, os.replace it) makes a file whole; a log that
    several rules add to is not one rule's to put back."""
    final, log = str(tmp_path / "model.json"), str(tmp_path / "log.txt")

    @b.rule
    def save():
        calls.append("save")
        with open(log, "a") as f:
            f.write("save ran\n")
        with open(final + ".tmp", "w") as f:
            f.write('{"w": 1}')
        os.replace(final + ".tmp", final)

    save()
    assert b.outputs(save.task()) == [final]
    os.remove(final)
    os.remove(log)
    save()
    assert calls == ["save"]
    assert open(final).read() == '{"w": 1}' and not os.path.exists(log)


def test_a_body_run_in_another_process_has_its_files_put_back(store_dir, tmp_path):
    out = str(tmp_path / "far.txt")

    def rules(b):
        @b.rule(executor="processes")
        def far(text):
            with open(out, "w") as f:
                f.write(text * 3)
            return os.getpid()
        return far

    with nbbuild.Build(store_dir, workers=2) as b:
        far = rules(b)
        assert far("ab") != os.getpid()
        assert b.outputs(far.task("ab")) == [out]
    os.remove(out)
    with nbbuild.Build(store_dir, workers=2) as b:
        far = rules(b)
        far("ab")
        assert b.report.executed == [] and open(out).read() == "ababab"


def test_with_policy_memory_files_are_not_stored_and_a_missing_one_reruns(b, tmp_path, calls):
    out = str(tmp_path / "m.txt")

    @b.rule(policy="memory")
    def mem():
        calls.append("mem")
        with open(out, "w") as f:
            f.write("kept in memory only")

    mem()
    mem()
    assert calls == ["mem"]
    os.remove(out)
    mem()
    assert calls == ["mem", "mem"] and os.path.exists(out)


def test_a_trace_keeps_its_files_apart_from_its_dependencies():
    """Outputs are not dependencies: matching looks at them only once every dependency matched.
    A trace without outputs is stored as before outputs existed, so stores made then keep theirs."""
    from nbbuild.engine.rebuild import match
    from nbbuild.engine.trace import Trace

    def trace(outputs=()):
        return Trace("t/1", "t", "[]", "t()", "v", ((("a/1", "x"),),), "h", 1.0, (), (), 0.0, outputs=outputs)

    plain, writer = trace(), trace((("/out.csv", "c1", "s1"),))
    assert plain.encode().count(b"\0F") == 11 and writer.encode().count(b"\0F") == 12
    assert Trace.decode(writer.encode()) == writer and Trace.decode(plain.encode()) == plain
    assert plain.ident != writer.ident != trace((("/out.csv", "c2", "s2"),)).ident
    assert writer.split() == (("a/1",), ())                        # not a file it read
    asked = []

    def ready(state, tr):
        asked.append(tr)
        return True
    assert match([writer], "v", None, {"a/1": "changed"}, lambda s, g: False, ready) == (None, -1)
    assert asked == []                                              # a stale trace writes nothing back
    assert match([writer], "v", None, {"a/1": "x"}, lambda s, g: True, ready) == (writer, 0)
    assert asked == [writer]


def shared_file_rules(b, calls, out):
    @b.rule
    def first():
        calls.append("first")
        with open(out, "w") as f:
            f.write("first")
        return 1

    @b.rule
    def second():
        calls.append("second")
        with open(out, "w") as f:
            f.write("second")
        return 2

    @b.rule
    def after_first():
        return first() + 10
    return first, second, after_first


def test_a_file_two_rules_write_holds_the_last_write_as_plain_execution_leaves_it(store_dir, tmp_path, calls):
    """Two cells write one file: the later write stays, though the first is met again (by a rule
    that reads its value), as plainly; a process puts back the files of a task it meets for the
    first time, in the order it meets them."""
    out = str(tmp_path / "shared.txt")
    with nbbuild.Build(store_dir) as b:
        first, second, after_first = shared_file_rules(b, calls, out)
        first()
        second()
        assert after_first() == 11 and open(out).read() == "second"
        assert b.report.restored == {}
        assert first() == 1 and calls == ["first", "second"]   # asked for: it writes again, as run again plainly
        assert open(out).read() == "first" and b.report.restored == {"first()": [out]}
    calls.clear()
    with nbbuild.Build(store_dir) as b:           # a new process: first, then second, reused
        first, second, after_first = shared_file_rules(b, calls, out)
        second()
        assert open(out).read() == "second"
        first()
        assert open(out).read() == "first"        # met for the first time: its write is the last
        assert after_first() == 11 and open(out).read() == "first"
        assert calls == []


def deleting_rules(b, calls, folder):
    cache, report = os.path.join(folder, "cache"), os.path.join(folder, "report.txt")

    @b.rule
    def fill():
        calls.append("fill")
        os.makedirs(cache, exist_ok=True)
        for i in range(3):
            with open(os.path.join(cache, f"{i}.bin"), "wb") as f:
                f.write(bytes([i]) * 10)
        with open(report, "w") as f:
            f.write("draft")
        return 3

    @b.rule
    def tidy():
        calls.append("tidy")
        shutil.rmtree(cache, ignore_errors=True)     # as a notebook's last cell removes its scratch folder
        os.remove(report)
        return "tidied"

    @b.rule
    def after_fill():
        return fill() + 1
    return fill, tidy, after_fill, cache, report


def test_files_a_rule_deletes_are_deleted_again_when_it_is_reused(store_dir, tmp_path, calls):
    """Deleting is an effect as writing is: one rule fills a folder, a later one removes it (and a
    file); reused in a new process, in that order, they leave the folder gone, as plain execution
    does, and a dependency met again does not bring the removed files back."""
    with nbbuild.Build(store_dir) as b:
        fill, tidy, after_fill, cache, report = deleting_rules(b, calls, str(tmp_path))
        fill(), tidy()
    assert not os.path.exists(cache) and not os.path.exists(report)
    calls.clear()
    with nbbuild.Build(store_dir) as b:            # a new process: both reused
        fill, tidy, after_fill, cache, report = deleting_rules(b, calls, str(tmp_path))
        fill()
        assert sorted(os.listdir(cache)) == ["0.bin", "1.bin", "2.bin"] and open(report).read() == "draft"
        assert tidy() == "tidied"
        assert not os.path.exists(cache) and not os.path.exists(report)
        assert after_fill() == 4 and not os.path.exists(cache) and not os.path.exists(report)
        assert calls == []
        assert b.outputs(tidy.task()) == [] and len(b.outputs(fill.task())) == 4   # it wrote none
        assert f"its last build removed files {short_path(cache)}, {short_path(report)} again" in b.why(tidy.task())


def test_a_temporary_file_a_rule_writes_and_removes_is_not_an_effect(b, tmp_path, calls):
    scratch = tmp_path / "scratch.txt"

    @b.rule
    def uses_scratch():
        scratch.write_text("x")
        os.remove(scratch)
        return 1

    uses_scratch()
    assert b.outputs(uses_scratch.task()) == [] and not scratch.exists()


def test_a_file_written_outside_any_rule_is_left_as_written_when_its_writer_is_met_again(b, tmp_path, calls):
    """An ordinary cell writes a file a rule wrote: plain execution leaves its bytes there, and a
    rule that reads the writer's value does not bring the writer's bytes back over them."""
    out = tmp_path / "shared.txt"
    first, second, after_first = shared_file_rules(b, calls, str(out))
    first()
    with open(out, "w") as f:
        f.write("by hand")
    assert after_first() == 11 and out.read_text() == "by hand"
    assert first() == 1 and out.read_text() == "first"       # asked for: as running it again plainly
    assert calls == ["first"]
