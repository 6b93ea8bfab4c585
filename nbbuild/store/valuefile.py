"""Value files: large values written and read at disk speed, checked on every load.

A value file is `mac | header | pickle stream | pad | buffer | pad | buffer ...`, the layout of
`serialisation.Serialized` behind a signature (signing.py), each buffer that is not empty after the zero
bytes (checked) that start it at a multiple of 64 bytes in the file (files written before had no
pads; they are read too). The
bulk (pickle protocol 5 out-of-band buffers: numpy arrays, pandas blocks, anything that supports
them) goes straight from the object's memory to the file. Loading maps a file whose buffers are
large (`_MAP_BYTES`) into memory, copy-on-write: what the file holds is already in the page
cache, and a fresh process would otherwise first have to get (zeroed) memory as large as the
value from the system, which costs more on this kind of machine than reading the file. Aligned
to 64 bytes, the arrays over the map are aligned as numpy's own are. Value files are never
written in place (written whole under a temporary name, then renamed; removed by unlinking,
which leaves a map readable), so the bytes checked are the bytes the value sees. Smaller values
are read into fresh memory the loaded object takes over: one copy.

Contract:
- `write(serialized, signer, tmp_dir, path_for)` writes the file under a temporary name in
  `tmp_dir` and moves it to `path_for(hash)` only when complete, so a value file is always whole (a killed writer leaves a
  temporary file that `sweep_tmp` removes). `place(tmp, path)` makes that move (os.replace; the
  store makes it together with the value's row, under its write lock). When the value's hash is not known yet it is computed
  while the file is written, so hashing costs no extra time; returns the hash.
- `read(path, digest, signer)` returns `(pickle stream, buffers)`, the buffers writable (a mapped
  one copies a page when it is first written, and never writes to the file); raises `Damaged`
  (saying what is wrong) for a missing, truncated, altered or unsigned file, with `foreign` set
  for a file another key signed (signing.py: not damage). The pickle stream is checked against
  the signature, and the buffers against the hash, before anything is unpickled.
- A large value is hashed on a helper thread while the calling thread writes it; a large file is
  read on a helper thread while the calling thread hashes what was read.
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

from .serialisation import MAGIC, Serialized, hash_bytes, split
from .signing import MAC_BYTES, Signer
from .table import FILE_NAME

__all__ = ["write", "read", "signed_part", "open_inline", "Damaged", "sweep", "sweep_tmp", "row_key", "file_name", "FILE_NAME"]


_CHUNK = 32 << 20
_READ_CHUNK = 8 << 20      # small enough that little hashing is left once the last read is done
# Buffers at least this big are anonymous maps; smaller ones are bytearrays from malloc, whose
# heap pages are reused from one load to the next, where a fresh map faults in every page each
# time (a 30 MB frame loads 2x faster so). 32 MiB is glibc's largest mmap threshold: malloc
# itself maps anything bigger afresh.
_MMAP_BYTES = 32 << 20
# A file with a buffer at least this big is mapped rather than read (see above).
_MAP_BYTES = 4 << 20
_ALIGN = 64
_CAN_MAP = hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "PROT_WRITE")


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


def _pad(pos: int) -> int:
    """Zero bytes before a buffer that would start at file offset `pos`."""
    return -pos % _ALIGN


def _layout(start: int, sizes: Iterable[int], padded: bool) -> tuple[list[int], int]:
    """(file offset of each buffer, file size), the buffers following a pickle stream that ends
    at `start`."""
    offsets, pos = [], start
    for size in sizes:
        if padded and size:
            pos += _pad(pos)
        offsets.append(pos)
        pos += size
    return offsets, pos


def _chunks(view: memoryview, size: int = _CHUNK) -> Iterable[memoryview]:
    for i in range(0, len(view), size):
        yield view[i:i + size]


def _hashing(ser: Serialized) -> Callable[[], str]:
    """Start hashing the value (xxh3_128 of the pickle stream and the buffers); returns what
    waits for the hash (and always for the helper: the value may change once it returns). A large value is hashed on a helper thread while the caller writes it
    (xxhash releases the GIL): both only read the value's memory."""
    def run() -> None:
        try:
            hasher = xxhash.xxh3_128(ser.meta)
            for raw in ser.raws:
                for chunk in _chunks(raw):
                    hasher.update(chunk)
            out.append(hasher.hexdigest())
        except BaseException as e:  # reported on the calling thread
            out.append(e)

    out: list[Any] = []
    if ser.nbytes < _MAP_BYTES:
        run()
        helper = None
    else:
        helper = threading.Thread(target=run, name="nbbuild-hash", daemon=True)
        helper.start()

    def result() -> str:
        if helper is not None:
            helper.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]
    return result


def _put(f: Any, chunk: memoryview) -> None:
    while len(chunk):
        chunk = chunk[f.write(chunk):]


def write(ser: Serialized, signer: Signer, tmp_dir: str, path_for: Callable[[str], str],
          place: Callable[[str, str], None] = os.replace) -> str:
    tmp = os.path.join(tmp_dir, f"{os.getpid()}-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb", buffering=0, closefd=True) as f:
            start = MAC_BYTES + len(ser.header) + len(ser.meta)
            offsets, total = _layout(start, (r.nbytes for r in ser.raws), True)
            _preallocate(fd, total)

            digest = None if ser.known else _hashing(ser)
            try:
                pos = start
                _put(f, memoryview(bytes(MAC_BYTES) + ser.header + ser.meta))   # the MAC goes in once the hash is known
                for raw, at in zip(ser.raws, offsets):
                    if at > pos:
                        _put(f, memoryview(bytes(at - pos)))
                    pos = at + raw.nbytes
                    for chunk in _chunks(raw):
                        _put(f, chunk)
            except BaseException:
                if digest is not None:          # the helper is done before the value may change
                    try:
                        digest()
                    except BaseException:       # the write's error is the one to report
                        pass
                raise
            if digest is not None:
                ser.digest = digest()
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


def signed_part(f: Any) -> bytes:
    """The part of a value file its MAC covers (header and pickle stream), read from the start of
    the open file `f`, unchecked: to sign the same value under another key (shared.py)."""
    fixed = f.read(MAC_BYTES + 8)
    if len(fixed) < MAC_BYTES + 8 or fixed[MAC_BYTES:MAC_BYTES + 4] != MAGIC:
        raise Damaged("its file is not an nbbuild value")
    (n,) = struct.unpack_from("<I", fixed, MAC_BYTES + 4)
    size_bytes = f.read(8 * (n + 1))
    if len(size_bytes) != 8 * (n + 1):
        raise Damaged("its file is truncated")
    meta_size = struct.unpack_from("<Q", size_bytes)[0]
    meta = f.read(meta_size)
    if len(meta) != meta_size:
        raise Damaged("its file is truncated")
    return fixed[MAC_BYTES:] + size_bytes + meta


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
        start = MAC_BYTES + len(header) + sizes[0]
        offsets, padded = _layout(start, sizes[1:], True)
        if total != padded:
            offsets, plain = _layout(start, sizes[1:], False)    # written before buffers had pads
            if total != plain:
                raise Damaged(f"its file has {total} bytes where {padded} were written")
        meta = f.read(sizes[0])
        if len(meta) != sizes[0]:
            raise Damaged("its file is truncated")
        ends = [start] + [at + n for at, n in zip(offsets, sizes[1:])]
        if any(os.pread(f.fileno(), at - end, end).strip(b"\0") for end, at in zip(ends, offsets) if at > end):
            raise Damaged("its file has bytes between its buffers that are not zero")
        signed = signer.verify(row_key(digest), mac or fixed[:MAC_BYTES], header + meta)
        if not signed:
            if signer.foreign(mac or fixed):
                raise Damaged("it was signed by another key", foreign=True)
            raise Damaged("its signature does not match this user's key")
        if _CAN_MAP and max(sizes[1:], default=0) >= _MAP_BYTES and all(o % _ALIGN == 0 for o in offsets):
            buffers = _mapped(f.fileno(), total, offsets, sizes[1:])
            hasher = xxhash.xxh3_128(meta)
            for b in buffers:
                for chunk in _chunks(b, _READ_CHUNK):
                    hasher.update(chunk)
            if hasher.hexdigest() != digest:
                raise Damaged("its content does not match its hash")
            return meta, buffers
        buffers = [_buffer(s) for s in sizes[1:]]
        chunks = [(at + i, c) for b, at in zip(buffers, offsets)
                  for i, c in zip(range(0, len(b), _READ_CHUNK), _chunks(memoryview(b), _READ_CHUNK))]
        done: queue.Queue = queue.Queue()

        def fill() -> None:          # on a helper thread: the disk, while this one hashes
            try:
                for at, chunk in chunks:
                    f.seek(at)
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
            hasher = xxhash.xxh3_128(meta)
            for _ in chunks:
                chunk = done.get()
                if isinstance(chunk, BaseException):
                    raise chunk
                hasher.update(chunk)
        finally:
            helper.join()
    if hasher.hexdigest() != digest:
        raise Damaged("its content does not match its hash")
    return meta, buffers


def _mapped(fd: int, total: int, offsets: list[int], sizes: tuple[int, ...]) -> list[memoryview]:
    """The buffers as views of one private, writable map of the whole file."""
    m = mmap.mmap(fd, total, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        m.madvise(mmap.MADV_SEQUENTIAL)      # the hash reads it in order: read ahead far
    except (AttributeError, OSError):
        pass
    view = memoryview(m)
    return [view[at:at + size] for at, size in zip(offsets, sizes)]


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
