"""Crash safety: a process killed with SIGKILL at any moment of a build leaves a store that opens,
holds no partial value, and serves the next build correctly.

A child process (store_workload.crash_child) builds arrays (value files), pieces and stats (inline
rows) at a scale that changes from build to build, with a quota small enough that every build
evicts, and prunes between builds. The test kills such children again and again, at moments spread
from interpreter start-up to the last build, all on one store; then it opens that store, loads
every value it holds, and builds with a fresh Build against the oracle.
"""
from __future__ import annotations

import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
import store_workload as w
from oracle import from_scratch

import nbbuild
from nbbuild.store.store import Store

N = 4                  # indices per scale: 4 arrays of base and 4 of scaled, 3 MB each
BUILDS = 6             # builds per child, at scales first, first + 1, ...
KILLS = 22
EARLY = 4              # kills before the child has opened the store
QUOTA = 30 * 10**6     # a build holds 24 MB of arrays: each evicts what the scales before it left
TMP_NAME = re.compile(r"^\d+-[0-9a-z]+\.tmp$")


def _child(store, scale):
    cfg = {"store": str(store), "scale": scale, "builds": BUILDS, "n": N, "quota": QUOTA}
    return subprocess.Popen(w.command("crash", cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=w.environment())


def _finish(proc):
    """What the child printed, one line each; it gave no value the oracle does not, found nothing
    damaged and failed nowhere (a killed child prints nothing more)."""
    out, err = proc.communicate(timeout=120)
    assert "WRONG" not in out, out
    assert "WARNING" not in err and "Traceback" not in err, err
    return out.splitlines()


def _check_builds(store, scales):
    """Build every crash target at each scale with a fresh Build: the oracle's values; then a
    second fresh Build runs nothing. Returns what the first builds reused."""
    reused = []
    for scale in scales:
        w.SCALE = scale
        with nbbuild.Build(store, min_free=0, workers=2) as b:
            targets = w.crash_targets(w.define(b), N)
            values = b.build(*targets)
            reused += b.report.reused
            assert not b.report.failed and not b.report.unstored
        for task, value in zip(targets, values):
            expected = from_scratch(task)
            if isinstance(expected, np.ndarray):
                assert np.array_equal(value, expected), (task, scale)
            else:
                assert value == expected, (task, scale)
        w.CALLS.clear()
        with nbbuild.Build(store, min_free=0, workers=2) as b:
            again = b.build(*w.crash_targets(w.define(b), N))
            assert b.report.executed == [] and w.CALLS == []
        assert [w.digest(v) for v in again] == [w.digest(v) for v in values]
    return reused


@pytest.fixture(autouse=True)
def _workload(monkeypatch):
    """The workload's globals (SCALE, CALLS) are restored after the test."""
    monkeypatch.setattr(w, "SCALE", w.SCALE)
    monkeypatch.setattr(w, "CALLS", [])


def _kill_children(tmp_path, store, rng):
    """Start crash children on `store` one after the other and SIGKILL each: a few before the store
    is open, the others once it is, spread over the time the builds of an unkilled child take.
    Returns (pid of the last child killed, its first scale, the scales some child finished)."""
    started, stamps = time.monotonic(), {}
    proc = _child(tmp_path / "calibration", 0)          # unkilled, on a store of its own
    for line in proc.stdout:
        stamps.setdefault(line.strip(), time.monotonic() - started)
    _finish(proc)
    assert proc.returncode == 0 and list(stamps) == ["start", "open", *[f"built {k}" for k in range(BUILDS)], "done"]
    opening, building = stamps["open"], stamps["done"] - stamps["open"]

    kills, early, before_open, in_builds, after_a_build, completed = 0, 0, 0, 0, 0, []
    for scale in range(3 * KILLS):
        proc = _child(store, scale)        # one scale on from the last child: it revisits the others
        seen = []
        # kills at random moments of the opening, and more (sooner) when too few landed before the
        # store opened: a child may open faster than the one the calibration timed
        if kills < EARLY or (before_open < 2 and early < 2 * EARLY):
            early += 1
            time.sleep(opening * rng.random() / (1 if before_open >= 2 or kills < EARLY else 4))
        else:
            while not seen or seen[-1] not in ("open", ""):
                seen.append(proc.stdout.readline().strip())
            time.sleep(building * (kills - early + rng.random()) / (KILLS - early))   # stratified
        os.kill(proc.pid, signal.SIGKILL)
        lines = seen + _finish(proc)
        built = [int(line.split()[1]) for line in lines if line.startswith("built ")]
        completed += built
        if proc.returncode == 0 or "done" in lines:
            # its builds were over before the kill came (it had exited, or was exiting): not a kill
            # of a build; children are faster than the calibration said (it may have run while
            # the machine was busier)
            assert lines[-1] == "done"
            building *= 0.8
            continue
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        before_open += "open" not in lines
        in_builds += "open" in lines and "done" not in lines
        after_a_build += bool(built) and "done" not in lines
        if built and in_builds - after_a_build < 3:
            # the first build was over before this kill, and too few kills have landed in one: a
            # child revisiting the store builds faster than the calibration, on a fresh one, did
            building *= 0.8
        if kills == KILLS:
            break
    # the kills landed at varied moments: before the store was open, and during the builds (the
    # first one, and later ones, after the evictions and pruning between builds)
    # (a kill that came after a child printed "done" was not counted: it is not one of a build)
    assert kills == KILLS and before_open >= 2 and in_builds >= KILLS - early, (before_open, in_builds)
    assert 3 <= after_a_build <= in_builds - 3, (after_a_build, in_builds)
    return proc.pid, scale, completed


def _assert_whole(store, dead_pid):
    """The store opens as it is: no index moved aside, SQLite finds nothing wrong, temporary files
    of dead writers are swept on opening, stray value files (a writer killed between its file and
    its row) are the sweep's and nothing else is, and every value row loads: whole, signed, and
    the value its hash says. Nothing was ever found damaged, by the children or here."""
    tmp = store / "tmp"
    (tmp / f"{dead_pid}-{'ab' * 6}.tmp").write_bytes(b"half a value")    # as a writer killed mid-file leaves
    assert all(TMP_NAME.match(name) for name in os.listdir(tmp)), os.listdir(tmp)
    assert not [n for n in os.listdir(store) if "damaged" in n]
    con = sqlite3.connect(store / "cache.db")
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    con.close()

    s = Store(store)
    assert os.listdir(tmp) == []
    named = s.table.filenames()
    s.sweep_files(older_than=0)            # nobody else writes now: what no row names is a stray
    assert {f"v/{d}/{f}" for d in os.listdir(store / "v") for f in os.listdir(store / "v" / d)} == named
    rows = s.value_rows()
    assert named and len(rows) > len(named)              # both kinds are there: value files and inline rows
    for d, size, *_ in rows:
        found, value, why = s.load(d)
        assert (found, why) == (True, ""), (d, size, why)
        assert w.digest(value) == d
    assert s.traces_index()                              # trace rows read back (a bad one would warn)
    stats = s.stats()
    assert stats["damaged"] == 0 and stats["write_failures"] == 0
    s.close()


def test_sigkill_at_any_moment_leaves_a_store_that_opens_whole_and_serves_the_next_build(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="nbbuild")
    store = tmp_path / "store"
    dead_pid, last, completed = _kill_children(tmp_path, store, random.Random(4242))
    _assert_whole(store, dead_pid)
    # checking builds: the scales of the last child (killed, maybe mid-build) and the last scale a
    # child finished; the stored traces serve them, and the values are the oracle's
    assert _check_builds(store, sorted({*range(last, last + BUILDS), completed[-1]}))
    assert [r.getMessage() for r in caplog.records if r.name == "nbbuild"] == []
