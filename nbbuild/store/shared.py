"""The shared tier: a store's second tier, in object storage or a shared directory a team uses.

The local store (store.py) is the near tier, with its quota and this user's key. The shared tier is
any fsspec location (`s3://bucket/prefix`, `gs://...`, `/mnt/team/nbbuild`) that several users,
CI jobs and cluster workers read and write; what is in it is signed with a team key, and nothing
read from it is unpickled unless that signature verifies. Values are content-addressed and
traces immutable, so writers never need to coordinate.

Layout under the location:
- `v/<hash[:2]>/<hash>`: a value, in the value file layout (valuefile.py) with the team's MAC.
  Two writers of one value write the same bytes: one object, whoever is last.
- `p/<time>-<random>.pack`: a pack, the rows one process uploaded in one go (traces `t:`,
  attachments `a:`, and for each value `v:<hash>`: empty when the value is an object in `v/`,
  else the small value itself, as a local store keeps small values in rows), sealed as a whole under
  the team key with the pack's name. A reader lists `p/` once and fetches every pack it has not
  seen in one batch (`fs.cat` of many paths: s3fs fetches them concurrently), never one request
  per task.

Contract:
- Nothing is ever visible half-written: on object storage an object appears when its upload
  completes (a killed upload leaves nothing); in a directory an object is written under a
  temporary name and renamed (a killed writer leaves a `.tmp-` file that `sweep` removes).
- `rows(seen)` returns the rows of packs not in `seen`, each pack verified under the team key: a
  pack that does not verify (tampered, another team's) is skipped with one warning, never used.
- `fetch_value(digest, path)` downloads a value to a local file and checks it (team MAC and
  content hash, valuefile.read) before anything is unpickled; a tampered or foreign object is a
  miss with one warning.
- Every failure to reach the tier (server down, credentials, network) raises `SharedUnreachable`
  (errors.py) with one line saying what failed; the caller goes on with its local tier.
"""
from __future__ import annotations

import logging
import os
import secrets
import struct
import time
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import SharedUnreachable
from .serialisation import split
from ..errors import SharedStoreError
from .signing import MAC_BYTES, Signer, team_key
from . import valuefile

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["SharedTier", "value_object_bytes", "open_tier"]

log = logging.getLogger("nbbuild")
_PACK_MAGIC = b"NBP1"
_COPY_CHUNK = 8 << 20


def _unreachable(what: str, url: str, e: BaseException) -> SharedUnreachable:
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    return SharedUnreachable(f"the shared store {url} could not be reached ({what}: {type(e).__name__}: {detail})")


def open_tier(url: str | None, readonly: bool | None, settings: Settings) -> SharedTier | None:
    """The shared tier a Build uses: `url` or NBBUILD_SHARED (None: none), read-only when asked
    or NBBUILD_SHARED_READONLY=1, signed with the key file NBBUILD_TEAM_KEY names (`settings`, as
    read: settings.py); closing waits NBBUILD_SHARED_WAIT seconds for uploads. Raises
    SharedStoreError (one line) when it cannot be used as given."""
    url = url if url is not None else settings.shared
    if not url:
        return None
    readonly = settings.shared_readonly if readonly is None else readonly
    where = settings.team_key
    if not where:
        raise SharedStoreError(f"the shared store {url} needs a team key: set NBBUILD_TEAM_KEY to a key file "
                               "(make one with `nbbuild store team-key FILE` and give it to your team)")
    try:
        signer = Signer(team_key(where))
    except OSError as e:
        raise SharedStoreError(f"NBBUILD_TEAM_KEY={where}: {e}") from None
    options: dict[str, Any] = {}
    if url.startswith(("s3://", "s3a://")):
        # a build asks the tier before a task runs: a network that does not answer must cost
        # seconds, not botocore's default minute and retries
        options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60,
                                    "retries": {"max_attempts": 2, "mode": "standard"}}
    return SharedTier(url, signer, readonly=readonly, wait=settings.shared_wait, **options)


class SharedTier:
    def __init__(self, url: str, signer: Signer, readonly: bool = False, wait: float = 30.0, **options: Any):
        import fsspec.core
        self.url, self.signer, self.readonly = url, signer, readonly
        self.wait = wait        # seconds a process waits at exit for its uploads (NBBUILD_SHARED_WAIT)
        # a tier of its own: fsspec's cached instance of the same URL may hold another endpoint's or
        # credentials' connections (the environment they came from changed since)
        options.setdefault("skip_instance_cache", True)
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as e:   # an unknown protocol, s3fs or gcsfs not installed
            raise SharedStoreError(f"the shared store {url} cannot be opened: {e}") from None
        self.root = root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self._warned: set[str] = set()
        self.damaged: set[str] = set()      # values found here that did not verify: to upload again

    # ------------------------------------------------------------ names

    def value_path(self, digest: str) -> str:
        return f"{self.root}/v/{digest[:2]}/{digest}"

    def _pack_dir(self) -> str:
        return f"{self.root}/p"

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # ------------------------------------------------------------ writing

    def _put(self, path: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Write one object whole: renamed into place in a directory, a single (multipart) upload
        on object storage, so no reader ever sees part of it."""
        target = path
        if self.local:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            target = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with self.fs.open(target, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            if self.local:
                os.replace(target, path)
        except BaseException:
            if self.local:
                try:
                    os.unlink(target)
                except OSError:
                    pass
            raise

    def put_value(self, digest: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Upload a value (its object bytes: value_object_bytes) unless it is there already and
        was not found damaged."""
        path = self.value_path(digest)
        try:
            if digest not in self.damaged and self.fs.exists(path):
                return
            self._put(path, chunks)
            self.damaged.discard(digest)
        except Exception as e:      # fsspec's backends raise their own types
            raise _unreachable("uploading a value", self.url, e) from None

    def put_rows(self, rows: list[tuple[str, bytes]]) -> str | None:
        """Upload rows as one pack; returns its name (None when there is nothing to upload)."""
        if not rows:
            return None
        body = bytearray(_PACK_MAGIC)
        for key, data in rows:
            k = key.encode()
            body += struct.pack("<II", len(k), len(data))
            body += k
            body += data
        name = f"{time.time_ns():020d}-{secrets.token_hex(6)}.pack"
        sealed = self.signer.seal("p:" + name, bytes(body))
        try:
            self._put(f"{self._pack_dir()}/{name}", [sealed])
        except Exception as e:
            raise _unreachable("uploading traces", self.url, e) from None
        return name

    # ------------------------------------------------------------ reading

    def packs(self) -> list[str]:
        """The names of every pack, oldest first (one listing; never a cached one)."""
        where = self._pack_dir()
        try:
            self.fs.invalidate_cache(where)
            if not self.fs.exists(where):
                return []
            names = [p.rsplit("/", 1)[1] for p in self.fs.ls(where, detail=False)]
        except FileNotFoundError:
            return []
        except Exception as e:
            raise _unreachable("listing traces", self.url, e) from None
        return sorted(n for n in names if n.endswith(".pack"))

    def rows(self, seen: set[str]) -> tuple[list[str], list[tuple[str, bytes]]]:
        """(the packs read, their rows in pack order) for the packs not in `seen`."""
        read, rows, _ = self.rows_by_pack(seen)
        return read, rows

    def rows_by_pack(self, seen: set[str]) -> tuple[list[str], list[tuple[str, bytes]], list[str]]:
        """rows(), and for each row the pack it came from."""
        fresh = [n for n in self.packs() if n not in seen]
        if not fresh:
            return [], [], []
        paths = [f"{self._pack_dir()}/{n}" for n in fresh]
        try:
            got = self.fs.cat(paths, on_error="return")
        except Exception as e:
            raise _unreachable("reading traces", self.url, e) from None
        if not isinstance(got, dict):
            got = {paths[0]: got}
        read: list[str] = []
        rows: list[tuple[str, bytes]] = []
        sources: list[str] = []
        for name, path in zip(fresh, paths):
            blob = got.get(path) if path in got else got.get(self.fs._strip_protocol(path))
            if isinstance(blob, BaseException) or blob is None:
                continue       # removed meanwhile (a collection), or a transient error: next time
            parsed = self._open_pack(name, blob)
            read.append(name)  # a bad pack is warned about once and never fetched again
            rows.extend(parsed)
            sources.extend([name] * len(parsed))
        return read, rows, sources

    def values(self) -> dict[str, tuple[int, float]]:
        """Every value object: hash -> (bytes, when stored)."""
        where = f"{self.root}/v"
        try:
            self.fs.invalidate_cache(where)
            found = self.fs.find(where, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:
            raise _unreachable("listing values", self.url, e) from None
        out: dict[str, tuple[int, float]] = {}
        for path, info in found.items():
            name = path.rsplit("/", 1)[1]
            if ".tmp-" in name:
                continue
            when = info.get("LastModified", info.get("mtime", info.get("created", 0.0)))
            out[name] = (int(info.get("size") or 0), when.timestamp() if hasattr(when, "timestamp") else float(when))
        return out

    def remove_values(self, digests: list[str]) -> None:
        self._remove([self.value_path(d) for d in digests], "removing values")

    def remove_packs(self, names: list[str]) -> None:
        self._remove([f"{self._pack_dir()}/{n}" for n in names], "removing merged packs")

    def _remove(self, paths: list[str], what: str) -> None:
        if not paths or self.readonly:
            return
        try:
            self.fs.rm(paths)
        except FileNotFoundError:
            pass               # another collection removed them first
        except Exception as e:
            raise _unreachable(what, self.url, e) from None

    def _open_pack(self, name: str, blob: bytes) -> list[tuple[str, bytes]]:
        data = self.signer.open("p:" + name, blob)
        if data is None or bytes(data[:4]) != _PACK_MAGIC:
            self._warn_once(name, "nbbuild: the shared store %s holds traces that do not verify under the team "
                            "key (%s): they are not used (tampered with, or written with another team key)",
                            self.url, name)
            return []
        out: list[tuple[str, bytes]] = []
        pos, end = 4, len(data)
        try:
            while pos < end:
                klen, dlen = struct.unpack_from("<II", data, pos)
                pos += 8
                key = bytes(data[pos:pos + klen]).decode()
                pos += klen
                if pos + dlen > end:
                    raise ValueError("truncated")
                out.append((key, bytes(data[pos:pos + dlen])))
                pos += dlen
        except (struct.error, ValueError, UnicodeDecodeError):
            self._warn_once(name, "nbbuild: a pack in the shared store %s is damaged (%s); it is not used",
                            self.url, name)
            return []
        return out

    def open_inline(self, digest: str, sealed: bytes) -> tuple[Any, list[Any]] | None:
        """(pickle stream, buffers) of a small value a pack carried, checked under the team key;
        None (one warning) when it does not verify."""
        try:
            return valuefile.open_inline(valuefile.row_key(digest), sealed, digest, self.signer)
        except valuefile.Damaged as e:
            self.damaged.add(digest)
            self._warn_once(digest, "nbbuild: the value %s in the shared store %s is not used: %s",
                            digest, self.url, str(e).replace("this user's key", "the team key"))
            return None

    def fetch_value(self, digest: str, path: str) -> tuple[bytes, list[Any]] | None:
        """Download a value into the local file `path` and check it under the team key: its
        (pickle stream, buffers) as valuefile.read gives them, or None: not in the shared tier, or
        it does not verify (one warning; the file is removed)."""
        try:
            self.fs.get_file(self.value_path(digest), path)
        except FileNotFoundError:
            return None
        except Exception as e:
            raise _unreachable("downloading a value", self.url, e) from None
        try:
            return valuefile.read(path, digest, self.signer)
        except valuefile.Damaged as e:
            self.damaged.add(digest)
            self._warn_once(digest, "nbbuild: the value %s in the shared store %s is not used: %s",
                            digest, self.url, str(e).replace("this user's key", "the team key"))
            try:
                os.unlink(path)
            except OSError:
                pass
            return None


def value_object_bytes(digest: str, source: str | bytes | memoryview, signer: Signer) -> Iterable[bytes | memoryview]:
    """A stored value as the shared tier keeps it: the local value (a value file's path, or an
    inline row's `mac | blob`) with its MAC replaced by the team's. Streamed: a value file is read
    in chunks, never whole."""
    row = valuefile.row_key(digest)
    if isinstance(source, str):
        with open(source, "rb") as f:
            signed = valuefile.signed_part(f)
            yield signer.mac(row, signed)
            f.seek(MAC_BYTES)
            while True:
                chunk = f.read(_COPY_CHUNK)
                if not chunk:
                    return
                yield chunk
    view = memoryview(source)[MAC_BYTES:]
    _meta, _buffers, length = split(view)
    yield signer.mac(row, view[:length])
    yield view
