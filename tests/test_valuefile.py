"""Value files: whole or absent, signed, hashed while written, checked on every load."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from nbbuild.store import serialisation, valuefile
from nbbuild.store.signing import MAC_BYTES, Signer
from nbbuild.store.valuefile import Damaged

SIGNER = Signer(b"k" * 32)


@pytest.fixture
def tmp_dir(tmp_path):
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp"


def _write(tmp_path, value, signer=SIGNER):
    """Write a value as the store does; (hash, path of its file, the Serialized)."""
    ser = serialisation.pickle_value(value)
    digest = valuefile.write(ser, signer, str(tmp_path / "tmp"), lambda d: str(tmp_path / valuefile.file_name(d)))
    return digest, tmp_path / valuefile.file_name(digest), ser


def _read(path, digest, signer=SIGNER):
    meta, buffers = valuefile.read(str(path), digest, signer)
    return serialisation.unpickle(meta, buffers)


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _several_buffers():
    return {"floats": np.arange(300_000, dtype=np.float64), "ints": np.arange(1000, dtype=np.int32) * 7,
            "grid": np.ones((50, 40), dtype=np.uint8), "empty": np.zeros(0), "text": "in the pickle stream"}


def test_a_large_array_round_trips_and_its_hash_is_the_values_hash(tmp_path, tmp_dir):
    value = np.random.default_rng(0).random(1_000_000)            # 8 MB
    digest, path, ser = _write(tmp_path, value)
    assert digest == serialisation.pickle_value(value).digest            # hashed while written, the same hash
    at = path.stat().st_size - value.nbytes                         # where the one buffer (the last bytes) starts
    assert at % 64 == 0 and 0 <= at - (MAC_BYTES + len(ser.header) + len(ser.meta)) < 64   # aligned, as numpy's
    assert path.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_dir) == []                               # the temporary file became the value file
    loaded = _read(path, digest)
    assert loaded.dtype == value.dtype and np.array_equal(loaded, value)


def test_a_value_with_several_out_of_band_buffers_round_trips(tmp_path, tmp_dir):
    value = _several_buffers()
    digest, path, ser = _write(tmp_path, value)
    assert len(ser.raws) >= 3                                       # several buffers besides the pickle stream
    assert digest == serialisation.pickle_value(_several_buffers()).digest
    loaded = _read(path, digest)
    assert sorted(loaded) == sorted(value) and loaded["text"] == value["text"]
    for name in ("floats", "ints", "grid", "empty"):
        assert loaded[name].dtype == value[name].dtype and np.array_equal(loaded[name], value[name]), name


def test_a_known_hash_writes_the_same_file(tmp_path, tmp_dir):
    value = np.arange(100_000)
    ser = serialisation.pickle_value(value)
    known = ser.digest                                             # asked for before writing
    first = valuefile.write(ser, SIGNER, str(tmp_dir), lambda d: str(tmp_path / "known.nbv"))
    digest, path, _ = _write(tmp_path, value)
    assert first == known == digest
    assert (tmp_path / "known.nbv").read_bytes() == path.read_bytes()


def test_chunks_smaller_than_the_value_give_the_same_file_and_value(tmp_path, tmp_dir, monkeypatch):
    value = np.random.default_rng(1).random(700_000)               # 5.6 MB in 1 MB chunks: the pipeline overlaps
    digest, path, _ = _write(tmp_path, value)
    whole = path.read_bytes()
    path.unlink()
    monkeypatch.setattr(valuefile, "_CHUNK", 1 << 20)
    assert _write(tmp_path, value)[0] == digest
    assert path.read_bytes() == whole
    assert np.array_equal(_read(path, digest), value)


def test_a_loaded_array_is_writable_fresh_memory(tmp_path, tmp_dir):
    value = np.arange(1_000_000, dtype=np.int64)                    # above the size loaded into anonymous maps
    small = np.arange(10, dtype=np.int64)                           # below it
    digest, path, _ = _write(tmp_path, {"big": value, "small": small})
    on_disk = path.read_bytes()
    one, two = _read(path, digest), _read(path, digest)
    for name, original in (("big", value), ("small", small)):
        a, b = one[name], two[name]
        assert a.flags.writeable and a.flags.c_contiguous
        assert not np.shares_memory(a, original) and not np.shares_memory(a, b)
        a[:] = -1                                                  # changing one load changes nothing else
        assert (a == -1).all() and np.array_equal(b, original)
        assert np.array_equal(original, np.arange(len(original)))
    assert path.read_bytes() == on_disk                             # not a view of the file either


def test_a_missing_file_is_damaged(tmp_path, tmp_dir):
    with pytest.raises(Damaged, match="missing"):
        valuefile.read(str(tmp_path / "nothing.nbv"), "0" * 32, SIGNER)


@pytest.mark.parametrize("keep", [0, 5, MAC_BYTES + 6, MAC_BYTES + 20, "meta", "buffer", "last"])
def test_a_truncated_file_is_damaged(tmp_path, tmp_dir, keep):
    digest, path, ser = _write(tmp_path, _several_buffers())
    size = path.stat().st_size
    keep = {"meta": MAC_BYTES + len(ser.header) + 3, "buffer": size // 2, "last": size - 1}.get(keep, keep)
    os.truncate(path, keep)
    with pytest.raises(Damaged) as e:
        valuefile.read(str(path), digest, SIGNER)
    assert str(e.value)


def test_a_flipped_byte_in_a_buffer_is_damaged(tmp_path, tmp_dir):
    digest, path, _ = _write(tmp_path, _several_buffers())
    size = path.stat().st_size
    for offset in (size - 1, size // 2):
        _flip(path, offset)
        with pytest.raises(Damaged, match="does not match its hash"):
            valuefile.read(str(path), digest, SIGNER)
        _flip(path, offset)
    assert sorted(_read(path, digest)) == sorted(_several_buffers())   # flipped back: whole again


def test_a_flipped_byte_in_the_pickle_stream_or_header_breaks_the_signature(tmp_path, tmp_dir):
    digest, path, ser = _write(tmp_path, _several_buffers())
    meta_at = MAC_BYTES + len(ser.header)
    for offset in (0, meta_at, meta_at + len(ser.meta) // 2, meta_at + len(ser.meta) - 1):
        _flip(path, offset)
        with pytest.raises(Damaged, match="signature") as e:
            valuefile.read(str(path), digest, SIGNER)
        assert not e.value.foreign
        _flip(path, offset)
    # the MAC's last bytes name the key that signed it: flipped, it names a key that is not ours,
    # so the file is never loaded, and kept (another key's, as far as this key can tell)
    _flip(path, MAC_BYTES - 1)
    with pytest.raises(Damaged, match="another key"):
        valuefile.read(str(path), digest, SIGNER)
    _flip(path, MAC_BYTES - 1)


def test_a_header_claiming_other_sizes_is_damaged(tmp_path, tmp_dir):
    digest, path, ser = _write(tmp_path, _several_buffers())
    for offset in (MAC_BYTES, MAC_BYTES + 4, MAC_BYTES + 8, MAC_BYTES + 16, MAC_BYTES + 25):
        _flip(path, offset)                    # the magic, the buffer count, the sizes
        with pytest.raises(Damaged):
            valuefile.read(str(path), digest, SIGNER)
        _flip(path, offset)


def test_a_file_signed_with_another_key_is_foreign_and_one_for_another_hash_is_damaged(tmp_path, tmp_dir):
    digest, path, _ = _write(tmp_path, np.arange(1000), signer=Signer(b"x" * 32))
    with pytest.raises(Damaged, match="signed by another key") as e:     # not loaded; not damage either
        valuefile.read(str(path), digest, SIGNER)
    assert e.value.foreign
    digest, path, _ = _write(tmp_path, np.arange(1000))
    with pytest.raises(Damaged, match="signature"):
        valuefile.read(str(path), "f" * 32, SIGNER)                 # a file moved to another value's name


def test_a_file_that_is_not_a_value_is_damaged(tmp_path):
    path = tmp_path / "garbage.nbv"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(Damaged, match="not an nbbuild value"):
        valuefile.read(str(path), "0" * 32, SIGNER)


def test_a_failed_write_leaves_no_file(tmp_path, tmp_dir):
    def nowhere(digest):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        valuefile.write(serialisation.pickle_value(np.arange(100_000)), SIGNER, str(tmp_dir), nowhere)
    assert os.listdir(tmp_dir) == []


def test_sweep_removes_temporary_files_of_dead_writers_and_keeps_live_ones(tmp_path, tmp_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "mine": f"{os.getpid()}-aaaa.tmp", "live": f"{live.pid}-bbbb.tmp", "dead": f"{dead.pid}-cccc.tmp",
            "stale": f"{live.pid}-dddd.tmp", "nameless": "junk.tmp",
        }
        for name in names.values():
            (tmp_dir / name).write_bytes(b"partial")
        day_ago = time.time() - 25 * 3600
        os.utime(tmp_dir / names["stale"], (day_ago, day_ago))    # a live pid, but far too old: a reused pid
        assert valuefile.sweep_tmp(str(tmp_dir)) == 3
        assert sorted(os.listdir(tmp_dir)) == sorted([names["mine"], names["live"]])
        assert valuefile.sweep_tmp(str(tmp_dir)) == 0
    finally:
        live.kill()
        live.wait()
    assert valuefile.sweep_tmp(str(tmp_dir)) == 1                 # its writer is gone now
    assert os.listdir(tmp_dir) == [names["mine"]]
    assert valuefile.sweep_tmp(str(tmp_path / "no-such-dir")) == 0


def _large_and_small():
    """A value with a buffer large enough that its file is mapped, not read, and smaller ones."""
    return {"big": np.arange(1_000_000, dtype=np.float64), "odd": np.arange(7, dtype=np.uint8),
            "ints": np.arange(1000, dtype=np.int32), "text": "in the pickle stream"}


def _buffer_offsets(path):
    """(end of the pickle stream, [file offset of each buffer]), from the header and the padding rule."""
    data = path.read_bytes()
    n = int.from_bytes(data[MAC_BYTES + 4:MAC_BYTES + 8], "little")
    sizes = [int.from_bytes(data[MAC_BYTES + 8 + 8 * i:MAC_BYTES + 16 + 8 * i], "little") for i in range(n + 1)]
    pos = start = MAC_BYTES + 8 + 8 * (n + 1) + sizes[0]
    offsets = []
    for size in sizes[1:]:
        pos += -pos % 64 if size else 0
        offsets.append(pos)
        pos += size
    assert pos == len(data)
    return start, offsets


@pytest.mark.parametrize("make", [_large_and_small, _several_buffers], ids=["mapped", "read"])
def test_every_buffer_starts_at_64_bytes_after_zeros_and_whatever_else_is_changed_is_damage(tmp_path, tmp_dir, make):
    digest, path, ser = _write(tmp_path, make())
    start, offsets = _buffer_offsets(path)
    assert all(at % 64 == 0 for at, raw in zip(offsets, ser.raws) if raw.nbytes)
    loaded = _read(path, digest)
    for name, original in make().items():
        if isinstance(original, np.ndarray):
            assert np.array_equal(loaded[name], original) and loaded[name].flags.aligned, name
    pads = [p for end, at in zip([start] + [o + r.nbytes for o, r in zip(offsets, ser.raws)], offsets)
            for p in range(end, at)]
    size = path.stat().st_size
    for offset, why in [(offsets[0] + 3, "hash"), (size - 1, "hash"), (pads[0], "not zero"), (pads[-1], "not zero")]:
        _flip(path, offset)
        with pytest.raises(Damaged, match=why):
            valuefile.read(str(path), digest, SIGNER)
        _flip(path, offset)
    for keep in (size - 1, offsets[0] + 10):
        data = path.read_bytes()
        os.truncate(path, keep)
        with pytest.raises(Damaged):
            valuefile.read(str(path), digest, SIGNER)
        path.write_bytes(data)
    assert sorted(_read(path, digest)) == sorted(make())


@pytest.mark.parametrize("make", [_large_and_small, _several_buffers], ids=["mapped", "read"])
def test_a_file_written_before_buffers_had_pads_still_loads(tmp_path, tmp_dir, make):
    ser = serialisation.pickle_value(make())
    path = tmp_path / "old.nbv"
    path.write_bytes(SIGNER.mac(valuefile.row_key(ser.digest), ser.header + ser.meta) + ser.header + ser.meta
                     + b"".join(bytes(r) for r in ser.raws))
    loaded = _read(path, ser.digest)
    assert sorted(loaded) == sorted(make()) and np.array_equal(loaded["ints"], make()["ints"])
    _flip(path, path.stat().st_size - 1)
    with pytest.raises(Damaged, match="hash"):
        valuefile.read(str(path), ser.digest, SIGNER)


def test_a_large_loaded_array_is_a_private_map_of_its_file(tmp_path, tmp_dir):
    # no fresh memory as large as the value: the page cache's pages, copied only when written
    digest, path, _ = _write(tmp_path, _large_and_small())
    loaded = _read(path, digest)
    maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else str(path)
    assert str(path) in maps
    loaded["big"][:10] = -1
    assert _read(path, digest)["big"][0] == 0


def test_a_large_write_that_fails_midway_raises_its_error_and_leaves_no_file(tmp_path, tmp_dir, monkeypatch):
    # the hash of a large value is computed on a helper thread meanwhile: it is waited for, not reported
    real, calls = valuefile._put, []

    def put(f, chunk):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(f, chunk)

    monkeypatch.setattr(valuefile, "_CHUNK", 1 << 20)
    monkeypatch.setattr(valuefile, "_put", put)
    ser = serialisation.pickle_value(np.arange(2_000_000, dtype=np.float64))      # 16 MB: hashed on a helper
    with pytest.raises(OSError, match="No space"):
        valuefile.write(ser, SIGNER, str(tmp_dir), lambda d: str(tmp_path / valuefile.file_name(d)))
    assert os.listdir(tmp_dir) == [] and not (tmp_path / "v").exists()
    assert [t for t in threading.enumerate() if t.name == "nbbuild-hash"] == []
