"""File inputs: declared with nbbuild.file, or tracked when a rule opens them for reading."""
from __future__ import annotations

import os
import time

import pytest

import nbbuild
from nbbuild.engine import files
from nbbuild.engine.trace import MISSING


def test_the_hash_follows_content_not_mtime(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one")
    h = files.FileHasher()
    first = h.hash(str(p))
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert h.hash(str(p)) == first
    p.write_text("two")
    assert h.hash(str(p)) != first
    assert h.hash(str(tmp_path / "missing.txt")) == MISSING


def test_an_untouched_file_is_not_read_again(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    p.write_text("data")
    old = time.time_ns() - 10 * 10**9
    os.utime(p, ns=(old, old))       # changed long ago: its stat entry can be trusted
    h = files.FileHasher()
    digest = h.hash(str(p))
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    assert h.hash(str(p)) == digest
    assert reads == []


def test_a_racy_stat_entry_is_hashed_again(tmp_path):
    """Written twice within one mtime tick with the same size: the (size, mtime) check alone would
    miss the second write, so an entry taken right after a change is not trusted."""
    p = tmp_path / "a.txt"
    p.write_text("aaaa")
    h = files.FileHasher()
    first = h.hash(str(p))
    st = os.stat(p)
    p.write_text("bbbb")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))   # same size, same mtime
    assert h.hash(str(p)) != first


def test_a_directory_hashes_its_files(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.txt").write_text("1")
    h = files.FileHasher()
    first = h.hash(str(d))
    (d / "y.txt").write_text("2")
    assert h.hash(str(d)) != first


def test_files_a_rule_opens_are_inputs_without_declaration(b, tmp_path, calls):
    data = tmp_path / "data.csv"
    data.write_text("x\n1\n2\n")

    @b.rule
    def total():
        calls.append("total")
        with open(data) as f:
            return sum(int(v) for v in f.read().split()[1:])

    assert total() == 3
    assert total() == 3
    assert calls == ["total"]
    data.write_text("x\n1\n2\n3\n")
    assert total() == 6
    assert calls == ["total", "total"]


def test_pandas_read_csv_is_tracked(b, tmp_path, calls):
    pd = pytest.importorskip("pandas")
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")

    @b.rule
    def frame():
        calls.append("frame")
        return pd.read_csv(data)["a"].sum()

    assert frame() == 1
    frame()
    data.write_text("a,b\n5,2\n")
    assert frame() == 5
    assert calls == ["frame", "frame"]


def test_declared_files_are_inputs_and_missing_files_are_noticed(b, tmp_path, calls):
    data = tmp_path / "in.txt"
    data.write_text("1")

    @b.rule
    def exists():
        calls.append("exists")
        return os.path.exists(nbbuild.file(data))

    assert exists() is True
    data.unlink()
    assert exists() is False
    assert calls == ["exists", "exists"]


def test_files_a_rule_writes_are_not_inputs(b, tmp_path, calls):
    out = tmp_path / "out.txt"

    @b.rule
    def write():
        calls.append("write")
        with open(out, "w") as f:
            f.write(str(time.time()))
        with open(out) as f:
            return len(f.read()) > 0

    assert write() is True
    assert write() is True
    assert calls == ["write"]
    keys = [k for g in b.store.traces(write.task().key)[0].deps for k, _ in g]
    assert keys == []


def test_installed_code_and_the_store_are_not_inputs(b):
    import json

    @b.rule
    def reads_installed():
        import email.mime.text  # noqa: F401 - an import opens files of the installation
        return json.dumps([1])

    reads_installed()
    assert b.store.traces(reads_installed.task().key)[0].deps == ()


def test_a_file_changed_back_restores_without_running(b, tmp_path, calls):
    data = tmp_path / "v.txt"

    @b.rule
    def read():
        calls.append(data.read_text())
        return data.read_text() * 2

    constructed = []
    for content in ["a", "b", "a", "b"]:
        data.write_text(content)
        assert read() == content * 2
        constructed.append(b.report.constructed)
    assert calls == ["a", "b"]
    assert constructed == [[], [], ["read()"], []]   # the last matches the newest trace: verifying


def test_system_files_and_library_caches_are_not_inputs(b, tmp_path, monkeypatch):
    data = tmp_path / "data.txt"
    data.write_text("1")
    system_file = next(p for p in ("/etc/hostname", "/etc/passwd", "/etc/os-release") if os.path.exists(p))

    @b.rule
    def reads_both():
        open(system_file).read()
        return open(data).read()

    reads_both()
    keys = [k for g in b.store.traces(reads_both.task().key)[0].deps for k, _ in g]
    assert keys == ["@file:" + str(data)]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert os.path.join(os.path.realpath(tmp_path / "cache"), "") in files._system_prefixes()
