"""Rule bodies elsewhere (executors/worker.py, kernel.py, pools.py): a process pool and a real Dask LocalCluster
give the same values and the same run counts as threads; errors, timeouts, retries and cancel.

Bodies run in other processes, so run counts come from a file each body appends its name to
(its own side effect), read back as a list. Rules are defined inside the tests: cloudpickle ships
them by value, and nothing they use is a module-level name of this file (a worker could not
import it).
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

import nbbuild
from oracle import from_scratch
from waiting import wait_until

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    client = distributed.Client(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None)
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


@pytest.fixture(params=["threads", "processes", "dask"])
def executor(request):
    return request.getfixturevalue("cluster") if request.param == "dask" else request.param


def read(log) -> list[str]:
    return open(log).read().split() if os.path.exists(log) else []


def pipeline(b, log, data):
    @b.rule
    def words(path):
        with open(log, "a") as f:
            f.write("words\n")
        return open(nbbuild.file(path)).read().split()

    @b.rule
    def count(path):
        n = len(words(path))
        with open(log, "a") as f:
            f.write("count\n")
        return n

    square = b.rule(lambda x: x * x, name="square")         # a lambda: shipped by value

    @b.rule
    def report(path, n):
        with open(log, "a") as f:
            f.write("report\n")
        return {"count": count(path), "squares": sum(square.map(range(n))), "pid": os.getpid()}
    return report


def test_the_same_values_and_run_counts_as_threads(tmp_path, executor):
    log, data = str(tmp_path / "ran.txt"), tmp_path / "a.txt"
    data.write_text("one two three two")
    with nbbuild.Build(tmp_path / "store", executor=executor, workers=2) as b:
        report = pipeline(b, log, data)
        value = report(str(data), 4)
        assert {k: value[k] for k in ("count", "squares")} == {"count": 4, "squares": 14}
        assert (value["pid"] == os.getpid()) == (executor == "threads")      # it ran elsewhere
        assert sorted(read(log)) == ["count", "report", "words"]
        assert sorted(b.report.executed) == sorted(
            ["report('" + str(data) + "', 4)", f"count('{data}')", f"words('{data}')"]
            + [f"square({i})" for i in range(4)])
        expected = from_scratch(report.task(str(data), 4))                  # (it runs the bodies too)
        assert (value["count"], value["squares"]) == (expected["count"], expected["squares"])
        os.remove(log)
    with nbbuild.Build(tmp_path / "store", executor=executor, workers=2) as again:   # a fresh Build
        report = pipeline(again, log, data)
        assert report(str(data), 4)["count"] == 4
        assert read(log) == []                                               # nothing ran
        data.write_text("one two")                                           # a file read in the body
        assert report(str(data), 4)["count"] == 2
        assert sorted(read(log)) == ["count", "report", "words"]


def test_a_rule_that_fails_elsewhere_fails_its_task_with_the_workers_traceback(tmp_path, executor):
    with nbbuild.Build(tmp_path / "store", executor=executor, workers=2) as b:
        @b.rule
        def broken(x):
            return {"a": 1}[x]

        @b.rule
        def top():
            return broken("b")

        with pytest.raises(nbbuild.BuildError, match=r"broken\('b'\) failed: KeyError: 'b'") as info:
            top()
        assert [repr(t) for t in info.value.chain] == ["top()", "broken('b')"]
        if executor != "threads":
            assert "in the worker:" in "\n".join(getattr(info.value.__cause__, "__notes__", []))
        assert b.report.failed == ["broken('b')"] and b.report.skipped == ["top()"]


@pytest.mark.parametrize("where", ["processes", "dask"])
def test_a_body_past_its_timeout_is_stopped_and_the_executor_stays_usable(tmp_path, where, request):
    executor = request.getfixturevalue("cluster") if where == "dask" else where
    pid_file = str(tmp_path / "pid")
    with nbbuild.Build(tmp_path / "store", executor=executor, workers=2) as b:
        @b.rule(timeout=1)
        def slow():
            with open(pid_file, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(120)
            return 1

        @b.rule
        def quick():
            return 2

        start = time.monotonic()
        with pytest.raises(nbbuild.BuildError, match=r"slow\(\) failed: TimeoutError: slow\(\) ran longer than its "
                                                     r"timeout of 1 s: it was stopped"):
            slow()
        assert time.monotonic() - start < 15
        assert quick() == 2                                  # the executor still works
    assert not alive(int(open(pid_file).read()))             # closed: the body's process was stopped


def test_on_threads_a_body_past_its_timeout_is_reported_overdue(b, caplog):
    @b.rule(timeout=0.05)
    def slowish():
        time.sleep(0.2)
        return 1

    assert slowish() == 1
    assert b.report.overdue == ["slowish()"]
    said = re.search(r"ran (\d+\.\d) s, past its timeout of 0.05 s", caplog.text)
    assert said and float(said.group(1)) >= 0.2, caplog.text      # at least its 0.2 s: more on a busy machine


@pytest.mark.parametrize("where", ["threads", "processes"])
def test_a_flaky_rule_is_tried_again_and_the_attempts_are_reported(tmp_path, where):
    tries = str(tmp_path / "tries.txt")
    with nbbuild.Build(tmp_path / "store", executor=where, workers=2) as b:
        @b.rule(retries=2)
        def flaky():
            with open(tries, "a") as f:
                f.write("x")
            if len(open(tries).read()) < 3:
                raise ConnectionError("the server hung up")
            return "ok"

        assert flaky() == "ok"
        assert b.report.attempts == {"flaky()": 3}
        os.remove(tries)

        @b.rule(retries=1, name="flaky")
        def hopeless():
            with open(tries, "a") as f:
                f.write("x")
            raise ConnectionError("down")

        with pytest.raises(nbbuild.BuildError, match="ConnectionError: down"):
            hopeless()
        assert len(open(tries).read()) == 2 and b.report.attempts == {"flaky()": 2}


def alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test: a process started in the
    background by a non-interactive shell inherits SIGINT ignored, and Python then keeps it so."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def interrupt_when(condition) -> list[float]:
    """SIGINT to this process, as Ctrl-C or Jupyter's interrupt, once `condition()` holds. Returns
    a list that gets the time.monotonic() of the interrupt: how long stopping takes counts from
    then, not from the start of a build whose workers a busy machine may take seconds to start."""
    sent: list[float] = []

    def run() -> None:
        wait_until(condition, "the bodies to start")
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=run, daemon=True).start()
    return sent


@pytest.mark.parametrize("where", ["processes", "dask"])
def test_an_interrupt_cancels_remote_work_stores_nothing_and_leaves_the_executor_usable(tmp_path, where, request,
                                                                                       capfd, sigint):
    executor = request.getfixturevalue("cluster") if where == "dask" else where
    started = [str(tmp_path / f"started{i}") for i in range(2)]
    with nbbuild.Build(tmp_path / "store", executor=executor, workers=2) as b:
        @b.rule
        def slow(i):
            with open(started[i] + ".part", "w") as f:
                f.write(str(os.getpid()))
            os.rename(started[i] + ".part", started[i])
            time.sleep(120)
            return i

        @b.rule
        def both():
            return sum(slow.map(range(2)))            # both() waits for the kernel meanwhile

        interrupted = interrupt_when(lambda: any(os.path.exists(p) for p in started))
        with pytest.raises(KeyboardInterrupt):
            both()
        assert time.monotonic() - interrupted[0] < 5          # stopping goes on in the background
        assert b.status(both.task()).state == "never built" and b.status(slow.task(0)).state == "never built"

        @b.rule
        def quick():
            return 3

        assert quick() == 3                                  # the executor still works
    # closed: the bodies' processes were stopped (the Build waits for that, within bounds)
    assert [alive(int(open(p).read())) for p in started if os.path.exists(p)] in ([False], [False, False])
    # nothing failed: no traceback or error line from the executor's machinery (in a kernel, what
    # reaches fd 2, here or in a worker, shows in the cell)
    err = capfd.readouterr().err
    assert "Traceback" not in err and " ERROR " not in err and "CancelledError" not in err, err


def test_a_rule_may_run_elsewhere_while_the_others_run_here(tmp_path):
    with nbbuild.Build(tmp_path / "store", workers=2) as b:
        @b.rule(executor="processes")
        def far():
            return os.getpid()

        @b.rule
        def near():
            return (os.getpid(), far())

        here, there = near()
        assert here == os.getpid() and there != os.getpid()


@pytest.mark.parametrize("where", ["threads", "processes"])
def test_a_file_saved_by_moving_it_into_place_is_an_output_wherever_the_body_ran(tmp_path, where):
    out = str(tmp_path / "table.csv")

    with nbbuild.Build(tmp_path / "store") as b:
        @b.rule(executor=where)
        def save():
            with open(out + ".tmp", "w") as f:      # an atomic save: written aside, then moved
                f.write("a,b\n")
            os.replace(out + ".tmp", out)
            return 1

        assert save() == 1
        assert b.outputs(save) == [out]


def test_a_bad_executor_is_one_line(tmp_path):
    with pytest.raises(nbbuild.RuleError, match=r"^executor='gpu': use 'threads', 'processes', 'dask'"):
        nbbuild.Build(tmp_path / "store", executor="gpu")
    with nbbuild.Build(tmp_path / "store") as b:
        with pytest.raises(nbbuild.RuleError, match=r"^rule f: timeout=0: give seconds, more than 0$"):
            b.rule(lambda: 1, name="f", timeout=0)
        with pytest.raises(nbbuild.RuleError, match=r"^rule f: retries=-1: give a whole number, 0 or more$"):
            b.rule(lambda: 1, name="f", retries=-1)


def test_a_dask_worker_drops_only_distributeds_client_teardown_noise():
    """What a worker prints to the stderr it shares with the kernel: not distributed's "Exception
    ignored in Client.__del__ ... IOLoop is closed" at its shutdown, every other unraisable error."""
    script = """
import gc, sys
from distributed import Client
from nbbuild.executors.worker import _quiet_client_teardown
_quiet_client_teardown()

class Other:
    def __del__(self):
        raise RuntimeError("IOLoop is closed")

class Noise:
    def __del__(self):
        raise RuntimeError("IOLoop is closed")
Noise.__del__.__qualname__ = Client.__del__.__qualname__

Noise(); Other(); gc.collect()
"""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stderr.count("Exception ignored in") == 1 and "Other.__del__" in out.stderr, out.stderr
