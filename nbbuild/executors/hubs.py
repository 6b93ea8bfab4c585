"""Where rule bodies run here: greenlets on the calling thread and on helper threads.

Contract:
- `Hubs(pool, helpers, lock, take, process).run(root, *args)` runs `root(*args)` in a greenlet on
  the calling thread and returns when it returns. The calling thread always takes part (so with
  no helpers every rule body runs on the caller's thread, as a notebook expects of plotting code);
  `helpers` threads of the `HelperPool` join the build.
- Each thread runs a hub loop: it resumes its own suspended greenlets first, then starts queued
  work (`take()`, called under `lock`, returns the next item or None) in a worker greenlet, which
  calls `process(item)`. Worker greenlets are pooled per thread (starting a fresh greenlet costs far
  more than switching to an idle one) and started from the hub, at the bottom of the stack.
- Every greenlet runs in a copy of the caller's context (contextvars), and each task a hub starts
  gets a fresh copy (of the item's `context` when it has one: the task that asked for it): rule
  bodies see what the caller set, as asyncio tasks do.
- `suspend()` parks the current greenlet until someone calls `wake([waker()])` for it: a waiting
  task holds no thread. Greenlets never move between threads: a waker names the greenlet's hub.
- `cancel(exc)` makes every later `suspend()` raise `Cancelled`; the calling thread's suspended
  greenlets are unwound at once (not at garbage collection), helpers unwind theirs and leave.
- `HelperPool` keeps helper threads between builds (daemon threads; `shutdown()` stops them).
Bodies that run elsewhere (a process pool, a Dask cluster) go through executors/pools.py.
"""
from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections import deque
from typing import Any, Callable

from greenlet import getcurrent, greenlet

from ..errors import Cancelled

__all__ = ["Hubs", "HelperPool", "Waker"]

log = logging.getLogger("nbbuild")
_IDLE = object()
_SUSPENDED = object()


class _Hub:
    __slots__ = ("greenlet", "resumes", "idle")

    def __init__(self) -> None:
        self.greenlet = getcurrent()
        self.resumes: deque[greenlet] = deque()
        self.idle: list[greenlet] = []


Waker = tuple[_Hub, greenlet]     # a greenlet suspended on a hub, to resume there

class Hubs:
    def __init__(self, pool: HelperPool, helpers: int, lock: threading.Lock,
                 take: Callable[[], Any], process: Callable[[Any], None],
                 unstall: Callable[[], bool] | None = None):
        self.pool, self.helpers = pool, helpers
        self.unstall = unstall      # under the lock, all threads idle: True if it queued work
        self.idle = 0
        self.lock = lock
        self.cond = threading.Condition(lock)
        self.take, self.process = take, process
        self.hubs: dict[int, _Hub] = {}
        self.finished = False
        self.cancelled: BaseException | None = None
        self.context = contextvars.Context()

    def run(self, root: Callable[..., Any], *args: Any) -> None:
        hub = self.hubs[threading.get_ident()] = _Hub()
        # rule bodies see the caller's context variables (decimal's context, a kernel's output
        # routing), each greenlet in a copy of its own, as asyncio gives each task
        self.context = contextvars.copy_context()
        g = greenlet(root, parent=hub.greenlet)
        g.gr_context = self.context.copy()
        self.pool.run(self._helper, self.helpers)
        try:
            self._loop(hub, g, args)
        finally:
            with self.lock:
                self.finished = True
                self.cond.notify_all()

    def waker(self) -> Waker:
        return self.hubs[threading.get_ident()], getcurrent()

    def suspend(self) -> None:
        self.hubs[threading.get_ident()].greenlet.switch(_SUSPENDED)
        if self.cancelled is not None:
            raise Cancelled("build interrupted")

    def wake(self, wakers: list[Waker]) -> None:
        """Under the lock: resume these greenlets (each on its own thread)."""
        for hub, g in wakers:
            hub.resumes.append(g)
        if wakers and self.helpers:
            self.cond.notify_all()

    def wake_from_outside(self, waker: Waker) -> None:
        """From any thread (the callback of a future of work elsewhere): resume that greenlet."""
        with self.lock:
            waker[0].resumes.append(waker[1])
            self.cond.notify_all()

    def notify(self) -> None:
        """Under the lock: new work was queued."""
        if self.helpers:
            self.cond.notify_all()

    def cancel(self, exc: BaseException, wakers: list[tuple[_Hub, greenlet]]) -> None:
        with self.lock:
            self.cancelled = exc
            self.wake(wakers)
            self.cond.notify_all()
        hub = self.hubs[threading.get_ident()]
        while hub.resumes:
            try:
                hub.resumes.popleft().switch()
            except BaseException:  # each unwinds with Cancelled; nothing to report
                pass
        self._retire(hub)

    # ------------------------------------------------------------ the loop

    def _helper(self) -> None:
        hub = _Hub()
        with self.lock:
            if self.finished:
                return
            self.hubs[threading.get_ident()] = hub
        try:
            self._loop(hub, None, ())
        finally:
            self._retire(hub)

    def _retire(self, hub: _Hub) -> None:
        idle, hub.idle = hub.idle, []
        for w in idle:
            w.switch(None)

    def _loop(self, hub: _Hub, root: greenlet | None, args: tuple) -> None:
        if root is not None:
            self._after(hub, root.switch(*args), root)
        while True:
            g: greenlet | None
            with self.lock:
                while True:
                    if hub.resumes:
                        g, item = hub.resumes.popleft(), None
                        break
                    if root is not None and root.dead:
                        break
                    item = self.take() if self.cancelled is None else None
                    if item is not None:
                        g = None
                        break
                    if root is None and (self.finished or self.cancelled is not None):
                        return
                    if self.unstall is not None and self._stalled() and self.unstall():
                        continue
                    self.idle += 1
                    try:
                        self.cond.wait()
                    finally:
                        self.idle -= 1
            if root is not None and root.dead:
                self._retire(hub)
                return
            if g is None:
                if hub.idle:
                    g = hub.idle.pop()
                else:
                    g = greenlet(self._worker, parent=hub.greenlet)
                # each queued task starts in a copy of its asker's context (the build's, else)
                asked = getattr(item, "context", None)
                g.gr_context = (asked if asked is not None else self.context).copy()
            try:
                self._after(hub, g.switch(item) if item is not None else g.switch(), g)
            except BaseException:
                # only cancellation unwinds a greenlet: on a helper it ends here; on the calling
                # thread it leaves run() so that the build is cancelled
                if root is not None or self.cancelled is None:
                    raise

    def _stalled(self) -> bool:
        """Under the lock: is this thread the last one to go idle, with nothing to resume?"""
        return (self.idle + 1 >= len(self.hubs) and self.cancelled is None
                and not any(h.resumes for h in self.hubs.values()))

    def _after(self, hub: _Hub, result: Any, g: greenlet) -> None:
        if result is _IDLE:
            hub.idle.append(g)

    def _worker(self, item: Any) -> None:
        hub = self.hubs[threading.get_ident()]
        while item is not None:
            self.process(item)
            item = hub.greenlet.switch(_IDLE)


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
            # the build's hubs hold its scheduler and so every value it made: not until the next build
            fn = None

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
