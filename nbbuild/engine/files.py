"""File inputs: `nbbuild.file(path)`, content hashes with a stat cache, and automatic tracking of the
files a rule body opens for reading.

Contract:
- `file(path)` declares `path` an input of the running rule and returns it unchanged.
- A file's hash is its content hash (xxh3_128); an untouched file (same size and mtime_ns) is not
  re-read, unless its stat entry was taken so soon after the file's last change that a later write
  could share the same mtime ("racy" entries are re-hashed). A missing file hashes to `MISSING`; a
  directory hashes its listing and its files' hashes.
- One audit hook per process records `open` events of the running body's recorder: reads only,
  never the Python installation, site-packages, `__pycache__`, `/proc`, `/sys`, `/dev`, the
  system's `/etc` and `/usr`, the user's cache directory, module source or bytecode, or the stores
  (registered with `exclude`); `nbbuild.file()` declares any of these explicitly when wanted. A file the run writes
  (opened for writing, or moved into place with os.rename/os.replace) is not an input; one it wrote
  whole (mode "w" or "x", O_TRUNC or O_EXCL, or moved into place) is an output (outputs.py), one it
  appended to or changed in place (a log) is neither. A file or folder it removed (`os.remove`,
  `os.rmdir`, `shutil.rmtree`, or renamed away) that it had not written itself is an effect too,
  a removal (outputs.py). Outside any rule body, the files written whole are told to
  `watch_outside`'s methods. The hook never raises and returns at once for
  every other event.
"""
from __future__ import annotations

import os
import site
import stat as statmod
import sys
import sysconfig
import threading
import time
import weakref
from typing import Any, Callable

import xxhash

from .trace import MISSING, current

__all__ = ["file", "FileHasher", "install_hook", "exclude", "short_path", "watch_outside"]

_RACY_NS = 2_000_000_000
_CHUNK = 1 << 20


def file(path: Any) -> Any:
    """Declare `path` an input of the running rule (content-hashed) and return it unchanged."""
    rec = current.get()
    if rec is not None and not rec.paused:
        rec.read_file(os.path.abspath(os.fspath(path)))
    return path


class FileHasher:
    """Content hashes of files, behind a (size, mtime_ns) cache that the store persists."""

    def __init__(self, entries: dict[str, tuple[int, int, str, int]] | None = None):
        self.entries: dict[str, tuple[int, int, str, int]] = dict(entries or {})
        self.changed: dict[str, tuple[int, int, str, int]] = {}
        self._lock = threading.Lock()

    def hash(self, path: str) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return MISSING
        if statmod.S_ISDIR(st.st_mode):
            return self._hash_dir(path)
        entry = self.entries.get(path)
        if entry is not None and entry[0] == st.st_size and entry[1] == st.st_mtime_ns \
                and entry[3] - st.st_mtime_ns > _RACY_NS:
            return entry[2]
        seen = time.time_ns()
        h = xxhash.xxh3_128()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except OSError:
            return MISSING
        digest = h.hexdigest()
        new = (st.st_size, st.st_mtime_ns, digest, seen)
        with self._lock:
            self.entries[path] = new
            self.changed[path] = new
        return digest

    def _hash_dir(self, path: str) -> str:
        h = xxhash.xxh3_128()
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(f"{os.path.relpath(full, path)}\0{self.hash(full)}\n".encode())
        return "dir:" + h.hexdigest()

    def take_changed(self) -> dict[str, tuple[int, int, str, int]]:
        with self._lock:
            out, self.changed = self.changed, {}
        return out


# ---------------------------------------------------------------- automatic tracking

def _system_prefixes() -> tuple[str, ...]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             "/proc", "/sys", "/dev"}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            paths.add(p)
    try:
        paths.update(site.getsitepackages())
        paths.add(site.getusersitepackages())
    except Exception:  # site may be stripped down in embedded interpreters
        pass
    # the system's own files and libraries' caches (a font cache, time zones) are not data
    paths.update(["/etc", "/usr", "/lib", "/lib64", "/bin", "/sbin",
                  os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")])
    real = {os.path.realpath(p) for p in paths if p}
    return tuple(os.path.join(p, "") for p in real if p != "/")


_excluded: tuple[str, ...] = ()
_SKIP_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".pyd", ".pth")
_installed = False
_install_lock = threading.Lock()
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_WHOLE_FLAGS = os.O_TRUNC | os.O_EXCL     # a file written from scratch, not added to


def exclude(path: str) -> None:
    """Never take files under `path` (a store) for inputs."""
    global _excluded
    _excluded = _excluded + (os.path.join(os.path.realpath(path), ""),)


def _tracked(path: Any) -> str | None:
    """The absolute path of a file the hook looks at, or None (a descriptor, code, excluded)."""
    if path is None or isinstance(path, int):
        return None
    path = os.path.abspath(os.fsdecode(path))
    if path.endswith(_SKIP_SUFFIXES) or "/__pycache__/" in path or path.startswith(_excluded):
        return None
    return path


_REMOVALS = frozenset({"os.remove", "os.rmdir", "shutil.rmtree"})


def _hook(event: str, args: tuple) -> None:
    if event != "open" and event != "os.rename" and event not in _REMOVALS:
        return
    try:
        rec = current.get()
        if rec is None:
            if _outside:
                _changed_outside(event, args)
            return
        if rec.paused:
            return
        if event == "os.rename":
            # os.rename and os.replace: a file moved into place (an atomic save) was written here,
            # and its old name removed
            if args[2] in (None, -1) and args[3] in (None, -1):
                if (src := _tracked(args[0])) is not None:
                    rec.removed_file(src)
                if (dst := _tracked(args[1])) is not None:
                    rec.wrote_file(dst)
            return
        if event in _REMOVALS:
            # relative to a descriptor: shutil.rmtree's own steps, its "shutil.rmtree" event says it all
            if args[1] in (None, -1) and (path := _tracked(args[0])) is not None:
                rec.removed_file(path)
            return
        path, mode, flags = args
        path = _tracked(path)
        if path is None:
            return
        if isinstance(mode, str):
            writes, whole = any(c in mode for c in "wax+"), "w" in mode or "x" in mode
        else:
            writes, whole = bool((flags or 0) & _WRITE_FLAGS), bool((flags or 0) & _WHOLE_FLAGS)
        if writes:
            rec.wrote_file(path, whole)
        elif not os.path.isdir(path):
            rec.read_file(path)
    except BaseException:  # an audit hook that raises breaks the user's open()
        pass


_outside: list[weakref.WeakMethod] = []


def watch_outside(method: Callable[[str], None]) -> None:
    """Call `method(path)` (a bound method, held weakly) for each file written whole outside any
    rule body (an ordinary cell's `df.to_csv`), so that no task puts back its own copy over it
    (outputs.Owners). Not for a removal: a file a task wrote, found missing, is put back by the
    next build that needs it (rather than failing the reader)."""
    _outside.append(weakref.WeakMethod(method))


def _changed_outside(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        whole = ("w" in mode or "x" in mode) if isinstance(mode, str) else bool((flags or 0) & _WHOLE_FLAGS)
        paths = [path] if whole else []
    elif event == "os.rename":
        paths = [args[1]] if args[2] in (None, -1) and args[3] in (None, -1) else []
    else:
        return
    for p in paths:
        if (tracked := _tracked(p)) is not None:
            for ref in list(_outside):
                if (method := ref()) is None:
                    _outside.remove(ref)
                else:
                    method(tracked)


def install_hook() -> None:
    """Install the process-wide audit hook once (hooks cannot be removed)."""
    global _installed, _excluded
    with _install_lock:
        if _installed:
            return
        _excluded = _system_prefixes() + _excluded
        sys.addaudithook(_hook)
        _installed = True


def short_path(path: str) -> str:
    """A path as the user would write it: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:   # another drive (Windows)
        return path
    return rel if not rel.startswith("..") else path
