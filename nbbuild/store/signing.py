"""Signing: every row nbbuild stores carries an HMAC under a key only this user can read.

Unpickling runs code, so a store must never load what someone else wrote into it: a store copied
from another user, or a row edited by hand, would otherwise run whatever its pickle says.

Contract:
- `user_key()` returns this user's 32-byte key from `$XDG_CONFIG_HOME/nbbuild/key` (by default
  `~/.config/nbbuild/key`), creating it (directory 0700, file 0600) on first use. Concurrent
  first uses agree on one key. A key file others can read is made private again, with a warning.
  When no key can be kept (no writable config directory), a key for this process only is used,
  with one warning: then nothing stored survives the process.
- `Signer(key).seal(row, data, signed)` returns `mac + data`; the MAC covers the row key and the
  first `signed` bytes of `data` (all of it by default). `open(row, sealed, signed)` returns
  `data`, or None when the MAC is missing or wrong.
- A MAC is MAC_BYTES: 12 bytes of HMAC-SHA256, then the key's id (`Signer.kid`, 4 bytes: the
  HMAC of a fixed string, which tells nothing of the key). `foreign(sealed)` says whether a row
  that does not open was sealed by another key (its id is not ours): such a row is another
  user's, to be ignored and kept; a row with our id and a wrong MAC is damaged. Rows sealed
  before key ids (a full 16-byte HMAC) still open under the key that sealed them. Values sign their header and pickle stream,
  the part that runs code when loaded; their bulk buffers are covered by the value hash, which is
  in the row key and checked on every load.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat

__all__ = ["user_key", "key_path", "team_key", "new_key_file", "Signer", "MAC_BYTES", "KID_BYTES"]

log = logging.getLogger("nbbuild")
MAC_BYTES = 16
KID_BYTES = 4                 # the key id ends the MAC: [HMAC (12 bytes) | key id (4 bytes)]
_HMAC_BYTES = MAC_BYTES - KID_BYTES
_KEY_BYTES = 32
_ephemeral: bytes | None = None


def key_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "nbbuild", "key")


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("nbbuild: %s could be read by other users; it is now private (mode 0600)", path)
            os.fchmod(f.fileno(), 0o600)
        key = f.read()
    if len(key) != _KEY_BYTES:
        raise OSError(f"{path} is not an nbbuild key ({len(key)} bytes); delete it to make a new one")
    return key


def _create(path: str) -> bytes:
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(_KEY_BYTES))
        try:
            os.link(tmp, path)       # fails if another process made the key first: theirs wins
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    key = _read(path)
    assert key is not None
    return key


def user_key() -> bytes:
    global _ephemeral
    path = key_path()
    try:
        return _read(path) or _create(path)
    except OSError as e:
        if _ephemeral is None:
            _ephemeral = secrets.token_bytes(_KEY_BYTES)
            log.warning("nbbuild: no signing key could be kept at %s (%s); values stored now are trusted "
                        "by this process only and will be built again after a restart. Make the directory "
                        "writable or set XDG_CONFIG_HOME.", path, e.strerror or e)
        return _ephemeral


def team_key(path: str) -> bytes:
    """The team key in the file `path` (NBBUILD_TEAM_KEY; shared.py): OSError when it cannot be
    read or is not a key (made private, as the user key is, when others could read it)."""
    key = _read(path)
    if key is None:
        raise FileNotFoundError(f"{path} does not exist")
    return key


def new_key_file(path: str) -> None:
    """Make a key file (mode 0600) that did not exist: a team's key, to hand to its members."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(_KEY_BYTES))


class Signer:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer pads hashed once: signing the many
    small rows of a store (one per trace) costs two hash-state copies each, not a new HMAC."""

    __slots__ = ("_inner", "_outer", "kid")

    def __init__(self, key: bytes):
        block = key.ljust(64, b"\0")      # SHA-256's block; keys here are 32 bytes
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self.kid = self._hmac("", b"nbbuild key id")[:KID_BYTES]

    def _hmac(self, row: str, data: bytes | memoryview, signed: int | None = None) -> bytes:
        inner = self._inner.copy()
        inner.update(row.encode() + b"\0")
        inner.update(data if signed is None else memoryview(data)[:signed])
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def mac(self, row: str, data: bytes | memoryview, signed: int | None = None) -> bytes:
        return self._hmac(row, data, signed)[:_HMAC_BYTES] + self.kid

    def verify(self, row: str, mac: bytes | memoryview, data: bytes | memoryview, signed: int | None = None) -> bool:
        """Whether `mac` is this key's over `data`: with its key id, or a full HMAC of a row sealed
        before key ids."""
        mac = bytes(mac)
        if len(mac) != MAC_BYTES:
            return False
        full = self._hmac(row, data, signed)
        if mac[_HMAC_BYTES:] == self.kid:
            return hmac.compare_digest(mac[:_HMAC_BYTES], full[:_HMAC_BYTES])
        return hmac.compare_digest(mac, full[:MAC_BYTES])

    def foreign(self, sealed: bytes | memoryview | None) -> bool:
        """Whether a row that does not open carries another key's id (not damage: another user's)."""
        if sealed is None or len(sealed) < MAC_BYTES:
            return False
        return bytes(memoryview(sealed)[_HMAC_BYTES:MAC_BYTES]) != self.kid

    def seal(self, row: str, data: bytes, signed: int | None = None) -> bytes:
        return self.mac(row, data, signed) + data

    def open(self, row: str, sealed: bytes | memoryview, signed: int | None = None) -> memoryview | None:
        view = memoryview(sealed)
        if len(view) < MAC_BYTES:
            return None
        data = view[MAC_BYTES:]
        if signed is not None and signed > len(data):
            return None
        if not self.verify(row, view[:MAC_BYTES], data, signed):
            return None
        return data
