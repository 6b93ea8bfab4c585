"""Values that go between the kernel and a Dask worker through the shared tier, not through the kernel.

With a shared tier (store/shared.py) a body on a Dask worker reads the large values it needs from
the tier and writes its large result there: the kernel sends and receives `SharedValue`s, which
name a value by hash, and records the trace as for any body. The worker opens the tier with its
own environment's team key (NBBUILD_TEAM_KEY: a LocalCluster's workers have the kernel's; a
cluster's are set up by the team); a worker without one gets and gives values the usual way.

Contract:
- `SharedValue(url, digest, nbytes)`: a value the tier at `url` holds, checked under the team key
  when it is read (`resolve`); a worker that cannot read it raises SharedStoreError saying why.
- `offer(url, value)` in a worker: the value uploaded to the tier (written as a value file under
  the team key, then uploaded whole) when it is at least SHARE_BYTES, as a SharedValue; else
  None (small values go back with the body's result, as they cost less than a round trip).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

__all__ = ["SharedValue", "SHARE_BYTES", "offer", "resolve"]

log = logging.getLogger("nbbuild")
SHARE_BYTES = 1 << 20
_tiers: dict[str, Any] = {}


@dataclass(frozen=True)
class SharedValue:
    url: str
    digest: str
    nbytes: int


def _tier(url: str) -> Any:
    """The tier at `url` as this worker can open it, or None (no team key here)."""
    if url not in _tiers:
        from ..errors import SettingError, SharedStoreError
        from ..settings import read
        from ..store.shared import open_tier
        try:
            _tiers[url] = open_tier(url, False, read())     # this worker's environment: its team key
        except (SharedStoreError, SettingError) as e:
            log.warning("nbbuild: this worker does not use the shared store (%s); values go through the kernel", e)
            _tiers[url] = None
    return _tiers[url]


def resolve(value: Any) -> Any:
    if not isinstance(value, SharedValue):
        return value
    from ..errors import SharedStoreError
    from ..store import serialisation
    tier = _tier(value.url)
    if tier is None:
        raise SharedStoreError(f"this worker cannot read the shared store {value.url}: set NBBUILD_TEAM_KEY on it")
    fd, path = tempfile.mkstemp(prefix="nbbuild-", suffix=".value")
    os.close(fd)
    try:
        got = tier.fetch_value(value.digest, path)
        if got is None:
            raise SharedStoreError(f"the value {value.digest} is not in the shared store {value.url} (evicted?)")
        return serialisation.unpickle(*got)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def offer(url: str, value: Any) -> SharedValue | None:
    from ..store import serialisation, valuefile
    from ..errors import SharedUnreachable
    tier = _tier(url)
    if tier is None:
        return None
    try:
        ser = serialisation.pickle_value(value)
    except serialisation.UnserializableValue:
        return None
    if ser.nbytes < SHARE_BYTES:
        return None
    folder = tempfile.mkdtemp(prefix="nbbuild-offer-")
    try:
        digest = valuefile.write(ser, tier.signer, folder, lambda d: os.path.join(folder, "value"))
        with open(os.path.join(folder, "value"), "rb") as f:
            tier.put_value(digest, iter(lambda: f.read(8 << 20), b""))
    except SharedUnreachable as e:
        log.warning("nbbuild: %s; the value goes back through the kernel", e)
        return None
    finally:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)
    return SharedValue(url, digest, ser.nbytes)
