"""Listeners: what is told about a Build's builds. One protocol, one registry (`Build.listeners`).

Contract:
- A `BuildListener` has up to three event methods, each called on the build's thread for every
  top-level build (never for a build nested in a rule body): `started(build)` before it runs,
  `finished(build)` after it, whether it succeeded, failed or was interrupted (`build.progress()`
  is settled by then), and `built(build, targets)` after a build that succeeded, once its lock
  is released (`targets`: its Tasks; `build.report`: its report). An event a listener does not
  define is not sent to it: the live views (console.TextProgress, the notebook's BuildView) define
  `started` and `finished`, the notebook's replay `built`. Subclass `Listener` for no-op defaults.
- `Listeners`, a part of Build (mixed in): `watch(listener)` adds it (once) and returns it,
  `unwatch(listener)` removes it. A listener that raises is logged and left out of the rest of
  that build's events; it never fails the build.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence, TypeVar, runtime_checkable

__all__ = ["BuildListener", "Listener", "Listeners"]

log = logging.getLogger("nbbuild")

L = TypeVar("L")


@runtime_checkable
class BuildListener(Protocol):
    def started(self, build: Any) -> None: ...

    def finished(self, build: Any) -> None: ...

    def built(self, build: Any, targets: Sequence[Any]) -> None: ...


class Listener:
    """A BuildListener that ignores every event; define the ones wanted."""

    def started(self, build: Any) -> None:
        pass

    def finished(self, build: Any) -> None:
        pass

    def built(self, build: Any, targets: Sequence[Any]) -> None:
        pass


class Listeners:
    """A part of Build: its listeners and how they are told."""
    listeners: list[BuildListener]

    def watch(self, listener: L) -> L:
        """Tell `listener` about every top-level build from now on; returns it."""
        if listener not in self.listeners:
            self.listeners.append(listener)     # type: ignore[arg-type]
        return listener

    def unwatch(self, listener: Any) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def _notify(self, event: str, listeners: list[Any], *args: Any) -> list[Any]:
        """Send `event` to each listener that defines it; those that raise are logged and left
        out of the list returned (the listeners for the rest of this build)."""
        ok = []
        for listener in listeners:
            method = getattr(listener, event, None)
            try:
                if method is not None:
                    method(self, *args)
                ok.append(listener)
            except Exception:  # a listener is the user's or the notebook's: it must not fail the build
                log.warning("nbbuild: a build view failed in %s; this listener is left out of the rest of the build",
                            event, exc_info=True)
        return ok
