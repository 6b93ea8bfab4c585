"""Foreign entries: rows another key signed, in a store several keys share.

A store may be opened under several signing keys (another user, a container, a CI job, a shell
with another XDG_CONFIG_HOME). Each key's rows are its own: a process never loads a row another
key signed (loading runs code), and never deletes or rewrites one either. Only
`nbbuild store gc --foreign` (`Build.gc_foreign`) removes them.

Contract:
- `owner(signer, key, value, filename)` is "mine", "foreign" or "damaged" for a row: its key id
  (signing.py) says whose it is; a row sealed before key ids is this user's when it opens under
  this key, else another's. A value file's row keeps the file's MAC in its value column; one
  from before key ids (NULL) counts as this user's, as every row of a store then was. A row with
  our id and a bad MAC is "mine" here: its damage shows when it is loaded.
- Where this key would write a row that another key's row holds already, that row stays theirs
  and this key writes its own beside it: a trace, attachment or file entry under `alt(row,
  kid)` (the row's name, a separator, the key id), a value as a cosignature `cosign(hash, kid)`,
  its MAC over the very bytes of their row (a value's row is content-addressed: the bytes are
  the ones this key would have written; its MAC is checked on every load). `base(row)` is the
  name without the key id.
- `rows(table, signer)` lists (key, bytes) of every foreign signed row (values, traces,
  attachments, file entries); `kept(...)` is the one-line warning, given once per process and
  store, saying that they are ignored and kept, and how to remove them.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from .signing import KID_BYTES, MAC_BYTES, Signer
from .table import Table

__all__ = ["owner", "rows", "kept", "SIGNED", "alt", "base", "cosign"]

log = logging.getLogger("nbbuild")
SIGNED = ("v:", "t:", "a:", "f:", "c:")       # the prefixes of signed rows
_SEP = "\x1f"
_warned: set[str] = set()
_lock = threading.Lock()


def alt(row: str, kid: bytes) -> str:
    return f"{row}{_SEP}{kid.hex()}"


def base(row: str) -> str:
    return row.split(_SEP, 1)[0]


def cosign(digest: str, kid: bytes) -> str:
    return f"c:{digest}#{kid.hex()}"


def owner(signer: Signer, key: str, value: Any, filename: Any = None) -> str:
    if filename is not None:
        if type(value) is bytes and len(value) == MAC_BYTES:
            return "mine" if value[MAC_BYTES - KID_BYTES:] == signer.kid else "foreign"
        return "mine"
    if type(value) is not bytes or len(value) < MAC_BYTES:
        return "damaged"
    if value[MAC_BYTES - KID_BYTES:MAC_BYTES] == signer.kid:
        return "mine"
    if key.startswith("v:"):
        from .valuefile import Damaged, open_inline
        try:
            open_inline(key, value, key[2:], signer)
            return "mine"
        except Damaged as e:
            return "foreign" if e.foreign else "damaged"
    return "mine" if signer.open(key, value) is not None else "foreign"


def rows(table: Table, signer: Signer) -> list[tuple[str, int]]:
    found = []
    for prefix in SIGNED:
        for key, value, _, filename in table.scan(prefix):
            if owner(signer, key, value, filename) == "foreign":
                size = table.size_of(key) if filename is not None else len(value)
                found.append((key, int(size or 0)))
    return found


def kept(path: str, key: str) -> None:
    """Say once per process and store that another key's rows are there, ignored and kept."""
    with _lock:
        if path in _warned:
            return
        _warned.add(path)
    log.warning("nbbuild: the store %s holds entries signed by another key (another user, or another "
                "XDG_CONFIG_HOME; first seen: %s): they are not loaded, and kept. `nbbuild store gc --foreign` "
                "removes them.", path, key.split("#")[0][:80])
