"""Value files: large values written and read at disk speed, checked on every load.

A value file is `mac | header | pickle stream | buffer | buffer ...`, the layout of
`hashing.Serialized` behind a signature (signing.py). The bulk (pickle protocol 5 out-of-band
buffers: numpy arrays, pandas blocks, anything that supports them) goes straight from the
object's memory to the file and back into fresh memory the loaded object takes over: one copy.

Contract:
- `write(serialized, signer, tmp_dir, path_for)` writes the file under a temporary name in
  `tmp_dir` and moves it to `path_for(hash)` only when complete, so a value file is always whole (a killed writer leaves a
  temporary file that `sweep_tmp` removes). `place(tmp, path)` makes that move (os.replace; the
  store makes it together with the value's row, under its write lock). When the value's hash is not known yet it is computed
  while the file is written, so hashing costs no extra time; returns the hash.
- `read(path, digest, signer)` returns `(pickle stream, buffers)`; raises `Damaged` (saying what
  is wrong) for a missing, truncated, altered or unsigned file, with `foreign` set for a file
  another key signed (signing.py: not damage). The pickle stream is checked
  against the signature before anything is unpickled; the buffers are checked against the hash
  while they are read.
- Disk I/O runs on a helper thread while the calling thread hashes the previous chunk.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import queue
import secrets
import struct
import sys
import threading
import time
from typing import Any, Callable, Iterable

import xxhash

from .hashing import MAGIC, Serialized, hash_bytes, split
from .signing import MAC_BYTES, Signer
from .table import FILE_NAME

__all__ = ["write", "read", "open_inline", "Damaged", "sweep", "sweep_tmp", "row_key", "file_name", "FILE_NAME"]


_CHUNK = 32 << 20
_READ_CHUNK = 8 << 20      # small enough that little hashing is left once the last read is done
# Buffers at least this big are anonymous maps; smaller ones are bytearrays from malloc, whose
# heap pages are reused from one load to the next, where a fresh map faults in every page each
# time (a 30 MB frame loads 2x faster so). 32 MiB is glibc's largest mmap threshold: malloc
# itself maps anything bigger afresh.
_MMAP_BYTES = 32 << 20


class Damaged(Exception):
    """A stored value that cannot be trusted; the message says what is wrong. `foreign`: it is
    whole but signed by another key (another user's value: ignored and kept, not damage)."""

    def __init__(self, message: str, foreign: bool = False):
        super().__init__(message)
        self.foreign = foreign


def row_key(digest: str) -> str:
    return "v:" + digest


def file_name(digest: str) -> str:
    """A value file's path inside the store; what a row may name (FILE_NAME), nothing else."""
    return f"v/{digest[:2]}/{digest}.nbv"


def _chunks(view: memoryview, size: int = _CHUNK) -> Iterable[memoryview]:
    for i in range(0, len(view), size):
        yield view[i:i + size]


def _pipeline(work: Callable[[memoryview], None], parts: Iterable[memoryview]) -> None:
    """`work` runs on a helper thread, one chunk behind the caller, who makes (and hashes) the
    next chunk meanwhile."""
    todo: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def run() -> None:
        while True:
            chunk = todo.get()
            if chunk is None:
                return
            if not failure:
                try:
                    work(chunk)
                except BaseException as e:  # reported on the calling thread
                    failure.append(e)

    helper = threading.Thread(target=run, name="nbbuild-io", daemon=True)
    helper.start()
    try:
        for chunk in parts:
            if failure:
                break
            todo.put(chunk)
    finally:
        todo.put(None)
        helper.join()
    if failure:
        raise failure[0]


def write(ser: Serialized, signer: Signer, tmp_dir: str, path_for: Callable[[str], str],
          place: Callable[[str, str], None] = os.replace) -> str:
    tmp = os.path.join(tmp_dir, f"{os.getpid()}-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb", buffering=0, closefd=True) as f:
            _preallocate(fd, MAC_BYTES + ser.nbytes)

            def put(chunk: memoryview) -> None:
                while len(chunk):
                    chunk = chunk[f.write(chunk):]

            head = bytes(MAC_BYTES) + ser.header + ser.meta   # the MAC goes in once the hash is known
            hasher = None if ser.known else xxhash.xxh3_128(ser.meta)

            def chunks() -> Iterable[memoryview]:
                yield memoryview(head)
                for raw in ser.raws:
                    for chunk in _chunks(raw):
                        if hasher is not None:
                            hasher.update(chunk)
                        yield chunk

            _pipeline(put, chunks())
            if hasher is not None:
                ser.digest = hasher.hexdigest()
            mac = signer.mac(row_key(ser.digest), ser.header + ser.meta)
            os.pwrite(f.fileno(), mac, 0)
        path = path_for(ser.digest)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        place(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return ser.digest


def open_inline(key: str, sealed: Any, digest: str, signer: Signer) -> tuple[memoryview, list]:
    """(pickle stream, writable buffers) of a value kept inline in its row (`mac | blob`), checked
    as a value file is; raises Damaged."""
    if type(sealed) is not bytes:
        raise Damaged("its row is not an nbbuild value")
    try:
        meta, buffers, signed = split(memoryview(sealed)[MAC_BYTES:])
    except ValueError as e:
        raise Damaged(f"its row is damaged ({e})") from None
    if signer.open(key, sealed, signed) is None:
        if signer.foreign(sealed):
            raise Damaged("it was signed by another key", foreign=True)
        raise Damaged("its signature does not match this user's key")
    if hash_bytes(meta, *buffers) != digest:
        raise Damaged("its content does not match its hash")
    return meta, [bytearray(b) for b in buffers]   # writable: loaded arrays behave like fresh ones


# populated at once: the kernel maps the zero pages in bulk, not one fault per 4 KB page as the
# read fills them (measured here: a large read 40% faster)
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)


def _fallocate() -> Callable[[int, int], None] | None:
    """fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size) from the C library on Linux, else None. Not
    os.posix_fallocate: where a filesystem cannot preallocate, glibc emulates it by writing to
    every block, which would make the write slower instead of faster."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

    def reserve(fd: int, size: int) -> None:
        call(fd, 1, 0, size)    # 1: FALLOC_FL_KEEP_SIZE; a failure (not supported, no space) is ignored
    return reserve


_FALLOCATE = _fallocate()


def _preallocate(fd: int, size: int) -> None:
    """Reserve a large value file's blocks before writing it, as numpy's tofile does: the
    filesystem allocates its extents once, not write by write (on ext4 here a quarter of a 1 GB
    write's time). A killed writer's temporary file is swept as before."""
    if _FALLOCATE is not None and size >= _MMAP_BYTES:
        _FALLOCATE(fd, size)


def _buffer(size: int) -> Any:
    if size >= _MMAP_BYTES:
        return mmap.mmap(-1, size, flags=_MAP_FLAGS)
    return bytearray(size)


def read(path: str, digest: str, signer: Signer, mac: bytes | None = None) -> tuple[bytes, list[Any]]:
    """`mac`: check the file against this MAC, not its own (a cosignature, foreign.py)."""
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise Damaged("its file is missing") from None
    with f:
        total = os.fstat(f.fileno()).st_size
        fixed = f.read(MAC_BYTES + 8)
        if len(fixed) < MAC_BYTES + 8 or fixed[MAC_BYTES:MAC_BYTES + 4] != MAGIC:
            raise Damaged("its file is not an nbbuild value")
        (n,) = struct.unpack_from("<I", fixed, MAC_BYTES + 4)
        if n > total // 8:
            raise Damaged("its file has a damaged header")
        size_bytes = f.read(8 * (n + 1))
        if len(size_bytes) != 8 * (n + 1):
            raise Damaged("its file is truncated")
        sizes = struct.unpack(f"<{n + 1}Q", size_bytes)
        header = fixed[MAC_BYTES:] + size_bytes
        if total != MAC_BYTES + len(header) + sum(sizes):
            raise Damaged(f"its file has {total} bytes where {MAC_BYTES + len(header) + sum(sizes)} were written")
        meta = f.read(sizes[0])
        buffers = [_buffer(s) for s in sizes[1:]]
        chunks = [c for b in buffers for c in _chunks(memoryview(b), _READ_CHUNK)]
        done: queue.Queue = queue.Queue()

        def fill() -> None:          # on a helper thread: the disk, while this one checks and hashes
            try:
                for chunk in chunks:
                    view = chunk
                    while len(view):
                        got = f.readinto(view)
                        if not got:
                            raise Damaged("its file is truncated")
                        view = view[got:]
                    done.put(chunk)
            except BaseException as e:  # reported on the calling thread
                done.put(e)

        helper = threading.Thread(target=fill, name="nbbuild-io", daemon=True)
        helper.start()
        try:
            signed = signer.verify(row_key(digest), mac or fixed[:MAC_BYTES], header + meta)
            hasher = xxhash.xxh3_128(meta)
            for _ in chunks:
                chunk = done.get()
                if isinstance(chunk, BaseException):
                    raise chunk
                hasher.update(chunk)
        finally:
            helper.join()
        if not signed:
            if signer.foreign(mac or fixed):
                raise Damaged("it was signed by another key", foreign=True)
            raise Damaged("its signature does not match this user's key")
    if hasher.hexdigest() != digest:
        raise Damaged("its content does not match its hash")
    return meta, buffers


def sweep_tmp(tmp_dir: str, older_than: float = 24 * 3600) -> int:
    """Remove temporary files of writers that died (their process is gone, or the file is old)."""
    removed = 0
    try:
        names = os.listdir(tmp_dir)
    except OSError:
        return 0
    now = time.time()
    for name in names:
        path = os.path.join(tmp_dir, name)
        pid = name.split("-", 1)[0]
        try:
            alive = pid.isdigit() and _alive(int(pid)) and now - os.stat(path).st_mtime < older_than
            if not alive:
                os.unlink(path)
                removed += 1
        except OSError:
            continue
    return removed


def sweep(store: str, named: set[str], older_than: float = 3600.0) -> int:
    """Remove value files of `store` that no row names (a writer killed between its file and its
    row), once they are old enough not to be another process's value about to get its row."""
    root = os.path.join(store, "v")
    now, removed = time.time(), 0
    for folder in (os.listdir(root) if os.path.isdir(root) else []):
        for name in os.listdir(os.path.join(root, folder)):
            rel = f"v/{folder}/{name}"
            try:
                if rel not in named and now - os.stat(os.path.join(store, rel)).st_mtime > older_than:
                    os.unlink(os.path.join(store, rel))
                    removed += 1
            except OSError:
                continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
