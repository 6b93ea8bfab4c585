"""Disk full or an unwritable store: the build still finishes with its values in memory and one
clear warning per build; nothing already stored is damaged.

The failures are real. Where mounting is permitted (root), the store lives on a small tmpfs that
the test fills up (ENOSPC) or remounts read-only. Elsewhere the process's file-size limit
(RLIMIT_FSIZE, SIGXFSZ ignored) makes the store's writes fail the same way (EFBIG), and a
directory without write permission (with the capabilities that let root ignore it dropped) is
the read-only store.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import hashlib
import logging
import os
import resource
import shutil
import signal
import stat
import subprocess
import tempfile

import numpy as np
import pytest

import nbbuild
from oracle import from_scratch

KB, MB = 1 << 10, 1 << 20
_DISK = 8 * MB


# ---------------------------------------------------------------- a small disk

@functools.cache
def _mountable() -> bool:
    where = tempfile.mkdtemp(prefix="nbbuild-mount-check-")
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", where],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", where], check=True)
        return ok
    except OSError:          # no mount command at all
        return False
    finally:
        os.rmdir(where)


class _Tmpfs:
    """An 8 MB tmpfs: `fill` leaves only so much space free, `free` gives it back."""

    kind = "tmpfs"

    def __init__(self, root):
        self.root = root
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={_DISK},mode=0700", "tmpfs", str(root)],
                       check=True, capture_output=True)
        self.fillers: list[str] = []

    def fill(self, leave: int) -> None:
        path = os.path.join(self.root, f"filler-{len(self.fillers)}")
        self.fillers.append(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            st = os.statvfs(self.root)
            size = st.f_bavail * st.f_frsize - leave
            if size > 0:
                os.posix_fallocate(fd, 0, size)
            if not leave:                   # to the last byte
                try:
                    while True:
                        os.write(fd, bytes(4096))
                except OSError:
                    pass
        finally:
            os.close(fd)

    def free(self) -> None:
        for path in self.fillers:
            os.unlink(path)
        self.fillers = []

    def floor(self) -> dict:
        return {}                           # the default: 5% of the disk

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.root)], check=True, capture_output=True)

    def writable(self) -> None:
        subprocess.run(["mount", "-o", "remount,rw", str(self.root)], check=True, capture_output=True)

    def close(self) -> None:
        gc.collect()                        # a store that failed to open may hold a connection until collected
        if subprocess.run(["umount", str(self.root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.root)], check=True)


class _Limited:
    """No mounting: `fill(leave)` lets no file grow past `leave` bytes (RLIMIT_FSIZE), `free`
    lifts the limit; `read_only` takes write permission away, from root too."""

    kind = "file-size limit"

    def __init__(self, root):
        self.root = root
        self.limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self.caps = None

    def fill(self, leave: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (leave, self.limit[1]))

    def free(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self.limit)

    def floor(self) -> dict:
        return {"min_free": shutil.disk_usage(self.root).free + 64 * MB}   # under the floor at once

    def read_only(self) -> None:
        for folder, _dirs, files in os.walk(self.root):
            for name in [folder] + [os.path.join(folder, f) for f in files]:
                os.chmod(name, stat.S_IMODE(os.stat(name).st_mode) & 0o500)    # private, and not writable
        self.caps = _drop_override()

    def writable(self) -> None:
        _restore(self.caps)
        self.caps = None
        for folder, _dirs, files in os.walk(self.root):
            for name in [folder] + [os.path.join(folder, f) for f in files]:
                os.chmod(name, stat.S_IMODE(os.stat(name).st_mode) | 0o200)

    def close(self) -> None:
        self.free()
        if self.caps is not None:
            self.writable()
        signal.signal(signal.SIGXFSZ, self.handler)


# Root ignores file permissions through CAP_DAC_OVERRIDE and CAP_FOWNER. Taking them out of this
# thread's effective set (threads started later inherit it; the permitted set keeps them, so they
# come back) makes a read-only directory read-only for root too. Without them, nothing changes.
_CAPS = (1 << 1) | (1 << 3)          # CAP_DAC_OVERRIDE, CAP_FOWNER


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _capabilities():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    return libc, header, data


def _drop_override():
    libc, header, data = _capabilities()
    saved = data[0].effective
    data[0].effective &= ~_CAPS
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    return saved


def _restore(saved) -> None:
    if saved is None:
        return
    libc, header, data = _capabilities()
    data[0].effective = saved
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


@pytest.fixture
def disk(tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    d = _Tmpfs(root) if _mountable() else _Limited(root)
    try:
        yield d
    finally:
        d.close()


# ---------------------------------------------------------------- the rules

def _define(b, calls):
    @b.rule
    def array(i, kb):
        calls.append(f"array({i}, {kb})")
        return np.full(kb * KB // 8, i, dtype=np.int64)

    @b.rule
    def tiny(i):
        calls.append(f"tiny({i})")
        return {"i": i, "double": i * 2}

    return {"array": array, "tiny": tiny}


def _build(path, calls, targets, b=None, **options):
    """Build `targets` (("array", i, kb) or ("tiny", i)), in a fresh Build unless one is given;
    every value is checked against the oracle. Returns the report."""
    if b is None:
        with nbbuild.Build(path, workers=1, **options) as fresh:
            return _build(path, calls, targets, fresh)
    rules = _define(b, calls)
    tasks = [rules[name].task(*args) for name, *args in targets]
    values = b.build(*tasks)
    ran = len(calls)
    for task, value in zip(tasks, values):
        expected = from_scratch(task)
        if isinstance(expected, np.ndarray):
            assert value.dtype == expected.dtype and np.array_equal(value, expected), task
        else:
            assert value == expected, task
    del calls[ran:]                              # the oracle's runs are not the build's
    return b.report


_BOUNDS = {"quota": "1 GB", "min_free": 0}     # only the disk itself says no


def _not_written(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "nbbuild" and r.levelno >= logging.WARNING and "could not be written" in r.getMessage()]


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "nbbuild" and r.levelno >= logging.WARNING]


def _files(store):
    """Every value file of the store, by name, with a digest of its bytes."""
    out = {}
    for folder, _, names in os.walk(os.path.join(store, "v")):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


EARLY = [("array", 0, 800), ("array", 1, 800), ("tiny", 0)]     # fit


@pytest.fixture
def stored(disk, calls):
    """The store on the small disk, with EARLY built and stored."""
    store = disk.root / "store"
    report = _build(store, calls, EARLY, **_BOUNDS)
    assert calls == ["array(0, 800)", "array(1, 800)", "tiny(0)"] and report.unstored == []
    calls.clear()
    return store


# ---------------------------------------------------------------- a full disk

def test_a_value_that_overflows_the_disk_stays_in_memory_and_nothing_stored_is_lost(disk, stored, calls, caplog):
    before = _files(stored)
    assert len(before) == 2
    disk.fill(leave=1 * MB)
    caplog.clear()
    report = _build(stored, calls, EARLY + [("tiny", 1), ("array", 2, 2048)], **_BOUNDS)
    assert calls == ["tiny(1)", "array(2, 2048)"]
    [warning] = _warnings(caplog)
    assert "could not be written" in warning and str(stored) in warning and "in memory" in warning
    assert report.unstored == ["array(2, 2048)"] and "not stored: array(2, 2048)" in str(report)
    [note] = [t.unstored for t in report.tasks if t.unstored]
    assert "could not be written" in note
    assert os.listdir(stored / "tmp") == []              # no half-written value file
    assert _files(stored) == before                      # what was stored is untouched

    calls.clear()
    caplog.clear()                                       # the disk is still full: what is stored still loads
    report = _build(stored, calls, EARLY + [("tiny", 1)], **_BOUNDS)
    assert calls == [] and report.executed == [] and _warnings(caplog) == []

    disk.free()
    report = _build(stored, calls, EARLY + [("tiny", 1), ("array", 2, 2048)], **_BOUNDS)
    assert calls == ["array(2, 2048)"] and report.unstored == [] and _warnings(caplog) == []
    assert len(_files(stored)) == 3
    calls.clear()
    report = _build(stored, calls, EARLY + [("tiny", 1), ("array", 2, 2048)], **_BOUNDS)
    assert calls == [] and report.executed == [] and _warnings(caplog) == []


def test_a_build_warns_once_however_many_writes_fail(disk, stored, calls, caplog):
    # the small value between the two large ones is committed with the second one's file:
    # a write that succeeds in between does not make a second warning
    disk.fill(leave=1 * MB)
    caplog.clear()
    report = _build(stored, calls, [("array", 2, 2048), ("tiny", 1), ("array", 3, 2048), ("tiny", 2)], **_BOUNDS)
    assert calls == ["array(2, 2048)", "tiny(1)", "array(3, 2048)", "tiny(2)"]
    assert report.unstored == ["array(2, 2048)", "array(3, 2048)"]
    assert len(_not_written(caplog)) == 1, _not_written(caplog)


def test_every_build_on_a_full_disk_warns_once(disk, stored, calls, caplog):
    with nbbuild.Build(stored, workers=1, **_BOUNDS) as b:      # a session that goes on while the disk fills
        disk.fill(leave=0)
        for i in (2, 3):
            caplog.clear()
            report = _build(stored, calls, [("array", i, 2048)], b)
            assert calls == [f"array({i}, 2048)"] and report.unstored == [f"array({i}, 2048)"]
            assert len(_not_written(caplog)) == 1, f"build {i - 1}: {_not_written(caplog)}"
            calls.clear()


def test_small_values_a_full_disk_refused_are_reported_unstored_then_stored_once_there_is_room(disk, stored, calls, caplog):
    with nbbuild.Build(stored, workers=1, **_BOUNDS) as b:      # opened while there was room
        disk.fill(leave=0)
        caplog.clear()
        report = _build(stored, calls, EARLY + [("tiny", 1), ("tiny", 2)], b)
        assert calls == ["tiny(1)", "tiny(2)"]
        assert len(_not_written(caplog)) == 1
        assert report.unstored == ["tiny(1)", "tiny(2)"]
        disk.free()
    # the refused batch was committed again when the Build closed, with room by then: a fresh
    # process finds them and runs nothing
    calls.clear()
    report = _build(stored, calls, EARLY + [("tiny", 1), ("tiny", 2)], **_BOUNDS)
    assert calls == [] and report.executed == []


def test_large_values_a_full_disk_refused_are_stored_once_there_is_room(disk, stored, calls, caplog):
    with nbbuild.Build(stored, workers=1, **_BOUNDS) as b:
        disk.fill(leave=0)
        report = _build(stored, calls, EARLY + [("array", 2, 2048), ("array", 3, 800)], b)
        assert calls == ["array(2, 2048)", "array(3, 800)"]
        assert report.unstored == ["array(2, 2048)", "array(3, 800)"]
        disk.free()
        calls.clear()
        report = _build(stored, calls, EARLY + [("tiny", 1)], b)     # the next build's flush writes them
        assert calls == ["tiny(1)"] and report.unstored == []
        assert len(_files(stored)) == 4
    # a fresh process finds them and runs nothing
    calls.clear()
    report = _build(stored, calls, EARLY + [("array", 2, 2048), ("array", 3, 800)], **_BOUNDS)
    assert calls == [] and report.executed == []


def test_a_refused_value_changed_in_place_since_is_not_stored_under_its_old_hash(disk, stored, calls, caplog):
    with nbbuild.Build(stored, workers=1, **_BOUNDS) as b:
        disk.fill(leave=0)
        rules = _define(b, calls)
        [value] = b.build(rules["array"].task(2, 2048))
        assert b.report.unstored == ["array(2, 2048)"]
        value += 1          # in place: the bytes the store kept to write again are these
        disk.free()
    assert len(_files(stored)) == 2                       # not written when the Build closed
    calls.clear()
    report = _build(stored, calls, [("array", 2, 2048)], **_BOUNDS)     # checked against the oracle
    assert calls == ["array(2, 2048)"] and report.unstored == []


def test_a_disk_full_to_the_last_byte_loses_nothing_stored(disk, stored, calls, caplog):
    before = _files(stored)
    with nbbuild.Build(stored, workers=1, **_BOUNDS) as b:
        disk.fill(leave=0)
        caplog.clear()
        report = _build(stored, calls, EARLY + [("tiny", 1), ("array", 2, 2048)], b)
        assert calls == ["tiny(1)", "array(2, 2048)"] and report.executed == calls
        assert "array(2, 2048)" in report.unstored
        assert len(_not_written(caplog)) == 1
        calls.clear()
        report = _build(stored, calls, EARLY + [("tiny", 1), ("array", 2, 2048)], b)
        assert calls == []                                  # this process still has them in memory
    disk.free()
    assert _files(stored) == before
    calls.clear()
    caplog.clear()
    _build(stored, calls, EARLY, **_BOUNDS)
    assert calls == [] and _warnings(caplog) == []         # stored before the disk filled: reused


def test_with_the_default_floor_eviction_makes_room_instead(disk, calls, caplog):
    store = disk.root / "store"
    bounds = {"quota": "1 GB", **disk.floor()}
    _build(store, calls, [("array", 0, 2048), ("array", 1, 2048)], **bounds)
    calls.clear()
    caplog.clear()
    with nbbuild.Build(store, workers=1, **bounds) as b:
        report = _build(store, calls, [("array", 2, 5120)], b)       # does not fit beside both
        evicted = b.store.stats()["evictions"]
    assert calls == ["array(2, 5120)"] and report.unstored == []
    assert _warnings(caplog) == []
    assert evicted >= 1 and (disk.kind != "tmpfs" or evicted == 1)   # the default floor asks for one
    calls.clear()
    report = _build(store, calls, [("array", 2, 5120)], **bounds)
    assert calls == [] and _warnings(caplog) == []


# ---------------------------------------------------------------- an unwritable store

@pytest.fixture(params=["under a regular file", "a regular file", "read-only"])
def unwritable(request, tmp_path, disk):
    if request.param == "under a regular file":
        (tmp_path / "plain").write_text("a file, not a directory")
        yield tmp_path / "plain" / "store"
    elif request.param == "a regular file":
        (tmp_path / "plain").write_text("a file, not a directory")
        yield tmp_path / "plain"
    else:
        (disk.root / "store").mkdir()
        disk.read_only()
        try:
            yield disk.root / "store"
        finally:
            disk.writable()


def test_an_unwritable_store_gives_a_temporary_one_with_one_warning(unwritable, calls, caplog):
    targets = [("tiny", 1), ("array", 1, 800)]
    with nbbuild.Build(unwritable, workers=1) as b:
        [warning] = _warnings(caplog)
        assert "cannot be used" in warning and str(unwritable) in warning and "temporary" in warning
        temporary = b.store.path
        assert temporary != str(unwritable) and os.path.isdir(temporary)
        caplog.clear()
        report = _build(unwritable, calls, targets, b)
        assert calls == ["tiny(1)", "array(1, 800)"] and report.unstored == []
        calls.clear()
        report = _build(unwritable, calls, targets, b)
        assert calls == [] and report.executed == []
        assert _warnings(caplog) == []
    assert not os.path.exists(temporary)                  # deleted when the session ends


def _open_under(path):
    """Files under `path` this process has open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path) + os.sep):
            found.append(target)
    return found


def test_a_store_whose_disk_turned_read_only_is_left_as_it_was(disk, stored, calls, caplog):
    before = _files(stored)
    disk.read_only()
    try:
        caplog.clear()
        report = _build(stored, calls, EARLY + [("tiny", 1)])
        assert "tiny(1)" in report.executed and report.unstored == []
        [warning] = _warnings(caplog)
        assert "cannot be used" in warning
        assert _open_under(stored) == []           # the store it could not use is let go, not held open
    finally:
        disk.writable()
    assert _files(stored) == before
    calls.clear()
    caplog.clear()
    _build(stored, calls, EARLY)
    assert calls == [] and _warnings(caplog) == []
