"""Files a rule body wrote: its outputs, stored beside its value and put back when it is reused.

Plain execution leaves behind the files a cell or function writes (`df.to_csv`, `np.save`,
`fig.savefig`); a reused task must leave the same bytes there, for a later rule or for another
program to read, without running.

Contract:
- Which files: those the body wrote whole, opened with "w" or "x" (O_TRUNC, O_EXCL) or moved into
  place (files.py's audit hook sees `open`, `os.open`, `os.rename`/`os.replace`, and so what pandas,
  numpy and matplotlib write), and those it declared with `output(path)` (written where the hook
  cannot see: a subprocess, a C library; a directory declares every file under it). A file it only
  appended to or changed in place (a log several rules add to) is not its own to put back: neither
  an input nor an output. A file that no longer exists when the body returns (a temporary file) is
  not an output. A body run elsewhere (executors/worker.py) reports what it
  wrote, and the files are stored from here: as for reads, they must be on a shared filesystem.
- `keep(store, written, persist)`, once a body has succeeded: each file is stored as a value
  (content-addressed, so it counts against the quota and is evicted by the same policy as any
  value; a file is read twice, never held whole in memory unless it is under 1 MB) and described
  by an `Output` of the trace: (absolute path, content hash, the stored copy's value hash). The
  copy's hash is `MISSING` when it is not stored (policy "memory", larger than the quota, a full
  disk); a file that already has its copy in the store is not written again.
- A file or folder the body removed (files.py), that it had not written itself and that is still
  gone when it returns, is an `Output` with content `MISSING`: reuse removes it again, so a cell that
  deletes its scratch folder leaves it gone, as plain execution does. `Build.outputs` lists only
  the files written.
- Outputs are not inputs: a changed output file never makes a trace stale by itself.
  `restore(store, file_hash, trace, restored)`, when a trace has matched on its dependencies: every
  output whose content differs from the recorded one (missing, changed) is written back from its
  copy, atomically (a temporary file beside it, then os.replace; its mode kept), and its path added
  to `restored`. A file that already matches is not touched (its mtime stays). False, writing
  nothing, when a file that differs has no copy any more (evicted): the task must run again.
- `look(file_hash, store, trace)`: what `restore` would do, without doing it: (why the trace cannot
  be reused, or None; paths it would put back). For explain.py. `copies(traces)`: the stored
  copies' hashes (kept with the targets' values after a build).
- A file several tasks write belongs to the one that wrote it, or put it back, last in this
  process (`Owners`): a dependency met again does not put back a file another task wrote since,
  changed or missing, for plain execution leaves the last write there (`with open("a.txt", "w")`
  in two cells). A build's target, and a task met for the first time in this process, put back
  all their files. A file written outside any task (an ordinary cell) is no task's until one
  writes it again (`Owners.outside`); one removed outside any task is put back when next needed. The same holds for the environment variables a task set (`ENV_PREFIX + name`
  among the paths: environment.py).
- `output(path)`: inside a rule body, declares `path` written by it and returns it unchanged;
  outside one, raises OutsideRuleError.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat as statmod
from typing import TYPE_CHECKING, Any, Callable, Iterable

import xxhash

from ..store import serialisation
from ..errors import OutsideRuleError
from .files import short_path
from .trace import MISSING, Output, Trace, current

if TYPE_CHECKING:
    from ..store.store import Store

__all__ = ["output", "keep", "restore", "look", "copies", "Owners"]

log = logging.getLogger("nbbuild")

# A file's copy is the pickle of one out-of-band buffer: this stream, then the file's bytes. So the
# copy is an ordinary value (store.load gives back the bytes) and its hash is xxh3_128 of META + bytes.
META = b"\x80\x05\x97."            # pickle.dumps(PickleBuffer(...), protocol=5, buffer_callback=...)
_CHUNK = 1 << 20
_IN_MEMORY = 1 << 20               # smaller files are read once and kept for the store's inline rows


def output(path: Any) -> Any:
    """Declare `path` a file the running rule body writes (by a subprocess, say: the audit hook
    sees only this process's opens); it is stored with the value and put back on reuse."""
    rec = current.get()
    if rec is None:
        raise OutsideRuleError(f"nbbuild.output({os.fspath(path)!r}) declares a file a rule writes: "
                               "call it inside a rule's body")
    rec.wrote_file(os.path.abspath(os.fspath(path)))
    return path


# ---------------------------------------------------------------- after a body succeeded

def keep(store: Store, written: Iterable[str], persist: bool, removed: Iterable[str] = ()) -> tuple[Output, ...]:
    found: list[Output] = []
    for path in _files(written):
        try:
            content, stored = _put(store if persist else None, path)
        except OSError:      # gone or unreadable since the body returned: not an output after all
            continue
        found.append((path, content, stored))
    made = {path for path, _, _ in found}
    found += [(path, MISSING, MISSING) for path in sorted(set(removed))
              if path not in made and not os.path.lexists(path)]
    return tuple(found)


def _files(written: Iterable[str]) -> list[str]:
    """The regular files among `written`, directories expanded, in a stable order."""
    out: list[str] = []
    for path in sorted(set(written)):
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                out += [os.path.join(root, n) for n in sorted(names) if os.path.isfile(os.path.join(root, n))]
        elif os.path.isfile(path):
            out.append(path)
    return list(dict.fromkeys(out))


class _Changed(Exception):
    """The file changed while it was being stored."""


def _put(store: Store | None, path: str) -> tuple[str, str]:
    """(content hash, stored copy's hash or MISSING) of one file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        # first pass: both hashes (the file was just written: it is in the page cache)
        content_hash, copy_hash = xxhash.xxh3_128(), xxhash.xxh3_128(META)
        data: bytearray | None = bytearray()
        size = 0
        while chunk := os.pread(fd, _CHUNK, size):
            content_hash.update(chunk)
            copy_hash.update(chunk)
            size += len(chunk)
            if data is not None:
                if size < _IN_MEMORY:
                    data += chunk
                else:
                    data = None
        content, digest = content_hash.hexdigest(), copy_hash.hexdigest()
        if store is None:
            return content, MISSING
        if store.has_value(digest):
            return content, digest
        raw: Any = memoryview(data) if data is not None else _FileView(fd, size, content)
        ser = serialisation.Serialized(META, [raw])
        ser.digest = digest
        try:
            why_not = store.put_value(ser)
        except _Changed:
            why_not = "it changed while it was stored"
        if why_not is not None:
            log.warning("nbbuild: file %s is not stored (%s): if it is deleted or changed, the rule that "
                        "wrote it runs again", short_path(path), why_not)
            return content, MISSING
        return content, digest
    finally:
        os.close(fd)


class _FileView:
    """A large file's bytes as the store writes a value file: its length, and slices read when
    asked for, in order (second pass). The last slice checks that they are the bytes hashed in
    the first pass, before the store moves the copy into place."""

    def __init__(self, fd: int, size: int, content: str):
        self.fd, self.nbytes, self.content = fd, size, content
        self.hasher = xxhash.xxh3_128()
        self.pos = 0

    def __len__(self) -> int:
        return self.nbytes

    def __getitem__(self, part: slice) -> bytes:
        start, stop = part.start or 0, min(part.stop, self.nbytes)
        data = os.pread(self.fd, stop - start, start)
        if start != self.pos or len(data) != stop - start:
            raise _Changed()
        self.hasher.update(data)
        self.pos = stop
        if stop == self.nbytes and (self.hasher.hexdigest() != self.content
                                    or os.fstat(self.fd).st_size != self.nbytes):
            raise _Changed()
        return data


# ---------------------------------------------------------------- on reuse

class Owners:
    """Which task wrote, or put back, each file last in this process (by task key). A task met
    for the first time, or a build's target, writes its files now, whoever wrote them before; a
    dependency met again puts back only those no task has written since."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}
        self.met: set[str] = set()

    def claim(self, key: str, paths: Iterable[str]) -> None:
        self.met.add(key)
        for path in paths:
            self.last[path] = key
            if os.path.isabs(path):   # a folder it wrote or removed holds all that was under it
                under = os.path.join(path, "")
                for other in [p for p in self.last if p.startswith(under)]:
                    self.last[other] = key

    def outside(self, path: str) -> None:
        """Written outside any task (an ordinary cell): no task's to put back when met again
        (files.watch_outside)."""
        if path in self.last:
            self.last[path] = ""

    def mine(self, key: str, target: bool = False) -> Callable[[str], bool]:
        """Whether a file is the task's to put back (a build's target: all it wrote)."""
        if target or key not in self.met:
            return lambda path: True
        return lambda path: self.last.get(path, key) == key


def look(file_hash: Callable[[str], str], store: Store, trace: Trace,
         mine: Callable[[str], bool] | None = None) -> tuple[str | None, list[str]]:
    pending: list[str] = []
    for path, content, stored in trace.outputs:
        if mine is not None and not mine(path):
            continue
        now = file_hash(path)
        if now == content:
            continue
        if content == MISSING:      # it removed the file: removed again
            pending.append(path)
            continue
        if stored == MISSING or not store.has_value(stored):
            what = "is missing" if now == MISSING else "changed"
            return f"file {short_path(path)} it wrote {what} and no copy of it is stored", []
        pending.append(path)
    return None, pending


def restore(store: Store, file_hash: Callable[[str], str], trace: Trace, restored: list[str],
            mine: Callable[[str], bool] | None = None) -> bool:
    why, pending = look(file_hash, store, trace, mine)
    if why is not None:
        return False
    stored = {path: copy for path, content, copy in trace.outputs if content != MISSING}
    for path in pending:
        if path not in stored:
            try:
                _remove(path)
            except OSError as e:
                log.warning("nbbuild: %s could not be removed (%s); %r runs again", short_path(path), e, trace.repr)
                return False
            restored.append(path)
            continue
        found, data, why = store.load(stored[path])
        if not found:       # damaged or evicted meanwhile: running the task writes it afresh
            if why:
                log.warning("nbbuild: the stored copy of file %s cannot be used (%s); %r runs again",
                            short_path(path), why, trace.repr)
            return False
        try:
            _write_back(path, data)
        except OSError as e:
            log.warning("nbbuild: file %s could not be restored (%s); %r runs again", short_path(path), e, trace.repr)
            return False
        finally:
            del data        # a large file's copy is in memory once, only while it is written
        restored.append(path)
    return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _write_back(path: str, data: Any) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.nbbuild-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # the umask applies, as to open()
    try:
        with open(fd, "wb", buffering=0, closefd=True) as f:
            view = memoryview(data)
            while len(view):
                view = view[f.write(view):]
        try:
            os.chmod(tmp, statmod.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def copies(traces: Iterable[Trace | None]) -> set[str]:
    return {stored for tr in traces if tr is not None for _, _, stored in tr.outputs if stored != MISSING}
