"""Where rule bodies run.

Contract: the default executor is threads. The thread that calls `build` always takes part (so
with `workers=1` every rule body runs on the caller's thread, as a notebook expects of plotting
code); `workers - 1` helper threads join each build. A `HelperPool` keeps those threads between
builds; each helper runs the callable it is handed (the scheduler's loop for one build) and then
waits for the next. Helpers are daemon threads and stop on `shutdown()`.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

__all__ = ["HelperPool"]

log = logging.getLogger("nbbuild")


class HelperPool:
    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def _serve(self) -> None:
        while True:
            fn = self._inbox.get()
            if fn is None:
                return
            try:
                fn()
            except BaseException:  # a helper must survive to serve the next build
                log.exception("nbbuild helper thread: unexpected error")

    def run(self, fn: Callable[[], None], count: int) -> None:
        """Have `count` helper threads each run `fn` once."""
        if count <= 0:
            return
        with self._lock:
            while len(self._threads) < count:
                t = threading.Thread(target=self._serve, name=f"nbbuild-worker-{len(self._threads) + 1}",
                                     daemon=True)
                t.start()
                self._threads.append(t)
        for _ in range(count):
            self._inbox.put(fn)

    def shutdown(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._inbox.put(None)
        for t in threads:
            t.join(timeout=5)
