"""Where rule bodies run: greenlets on the calling thread and on helper threads.

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
"""
from __future__ import annotations

import contextvars
import logging
import os
import queue
import threading
from collections import deque
from typing import Any, Callable

from greenlet import getcurrent, greenlet

from .errors import Cancelled

__all__ = ["Hubs", "HelperPool", "ProcessExecutor", "DaskExecutor", "make_executor"]

log = logging.getLogger("nbbuild")
_IDLE = object()
_SUSPENDED = object()


class _Hub:
    __slots__ = ("greenlet", "resumes", "idle")

    def __init__(self) -> None:
        self.greenlet = getcurrent()
        self.resumes: deque[greenlet] = deque()
        self.idle: list[greenlet] = []


class Hubs:
    def __init__(self, pool: HelperPool, helpers: int, lock: threading.Lock,
                 take: Callable[[], Any], process: Callable[[Any], None]):
        self.pool, self.helpers = pool, helpers
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

    def waker(self) -> tuple[_Hub, greenlet]:
        return self.hubs[threading.get_ident()], getcurrent()

    def suspend(self) -> None:
        self.hubs[threading.get_ident()].greenlet.switch(_SUSPENDED)
        if self.cancelled is not None:
            raise Cancelled("build interrupted")

    def wake(self, wakers: list[tuple[_Hub, greenlet]]) -> None:
        """Under the lock: resume these greenlets (each on its own thread)."""
        for hub, g in wakers:
            hub.resumes.append(g)
        if wakers and self.helpers:
            self.cond.notify_all()

    def wake_from_outside(self, waker: tuple[_Hub, greenlet]) -> None:
        """From any thread (a remote future's callback): resume that greenlet."""
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
                    self.cond.wait()
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


# ---------------------------------------------------------------- bodies elsewhere (remote.py)

def make_executor(spec: Any, workers: int) -> Any:
    """An executor for `spec` ("processes", "dask", a distributed.Client, a scheduler address);
    ValueError, in one line, for anything else. "dask" is the process's default Client when it
    has one, else a LocalCluster of its own (closed with the Build)."""
    if spec == "processes":
        # twice the workers: a body waiting for the kernel (a rule calling a rule) keeps its process
        return ProcessExecutor(max(2 * workers, 4))
    if spec == "dask" or (isinstance(spec, str) and ("://" in spec or ":" in spec)):
        try:
            import distributed
        except ImportError:
            raise ValueError("executor dask needs the dask extra: pip install 'nbbuild[dask]'") from None
        if spec == "dask":
            try:   # the Client this process made already (a notebook's `client = Client()`)
                return DaskExecutor(distributed.default_client())
            except ValueError:
                pass
            return DaskExecutor(distributed.Client(processes=True, dashboard_address=None, n_workers=max(workers, 2),
                                                   threads_per_worker=1), owned=True)
        return DaskExecutor(spec)
    if type(spec).__name__ == "Client" and hasattr(spec, "submit"):
        return DaskExecutor(spec)
    raise ValueError(f"executor={spec!r}: use 'threads', 'processes', 'dask', a distributed.Client or a "
                     "Dask scheduler's address")

#
# An executor's `start(payload, timeout, name)` returns a job: `next()` blocks for the body's next
# message (("need", ...), or ("done",) once it ended, however), `answer(message)` replies to a
# "need", `result()` is what `remote.run` returned (a timeout says so in one line), `stop()`
# stops the body wherever it is. The body's side of the channel (`ask`, `done`) is pickled to it.


class _QueueChannel:
    """The body's side, over two queues (a multiprocessing Manager's, or Dask's by name)."""

    def __init__(self, requests: Any, answers: Any, dask: bool = False):
        self.requests, self.answers, self.dask = requests, answers, dask

    def _queues(self) -> tuple[Any, Any]:
        if not self.dask:
            return self.requests, self.answers
        from distributed import Queue
        return Queue(self.requests), Queue(self.answers)

    def ask(self, message: tuple) -> tuple:
        requests, answers = self._queues()
        requests.put(message)
        if not self.dask:
            return answers.get()
        from distributed import rejoin, secede
        secede()                  # waiting for the kernel must not hold a worker thread
        try:
            return answers.get()
        finally:
            rejoin()

    def done(self) -> None:
        self._queues()[0].put(("done",))


class _Job:
    def __init__(self, future: Any, requests: Any, answers: Any, timeout: float | None, name: str,
                 stop: Callable[[], None], empty: type[BaseException]):
        self.future, self.requests, self.answers = future, requests, answers
        self.timeout, self.name, self._stop, self.empty = timeout, name, stop, empty
        self.timed_out = False

    def next(self) -> tuple:
        while True:
            try:
                return self.requests.get(timeout=1.0)
            except self.empty:
                if self.future.done():    # it ended without a word (a worker that died)
                    return ("done",)

    def answer(self, message: tuple) -> None:
        self.answers.put(message)

    def result(self) -> bytes:
        from concurrent.futures import TimeoutError as FutureTimeout
        if self.timed_out:
            raise self._overdue()
        try:
            return self.future.result()
        except FutureTimeout:
            raise self._overdue() from None

    def _overdue(self) -> TimeoutError:
        return TimeoutError(f"{self.name} ran longer than its timeout of {self.timeout:g} s: it was stopped")

    def stop(self) -> None:
        self._stop()
        try:
            self.requests.put(("done",))
        except Exception:  # the queue went with the worker: the watcher sees the future done
            pass


class ProcessExecutor:
    """Rule bodies in a pool of worker processes (pebble: a task past its timeout, or cancelled,
    has its worker process stopped and replaced; the pool stays usable). Workers are spawned, not
    forked: a kernel has threads. A Manager process carries the bodies' requests for values."""

    kind = "processes"

    def __init__(self, workers: int | None = None):
        import multiprocessing

        import pebble
        self.workers = workers or (os.cpu_count() or 1)
        self._context = multiprocessing.get_context("spawn")
        self.pool = pebble.ProcessPool(max_workers=self.workers, context=self._context)
        self._manager: Any = None
        self._lock = threading.Lock()
        self._waiting = 0

    def hold(self) -> bool:
        """May one more worker wait for the kernel? Not the last free one: what it waits for may
        need a process to run in."""
        with self._lock:
            if self._waiting + 1 >= self.workers:
                return False
            self._waiting += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._waiting -= 1

    def start(self, payload: bytes, timeout: float | None, name: str) -> _Job:
        import queue as queues

        from .remote import run
        with self._lock:
            if self._manager is None:
                self._manager = self._context.Manager()
            requests, answers = self._manager.Queue(), self._manager.Queue()
        future = self.pool.schedule(run, args=(payload, _QueueChannel(requests, answers)), timeout=timeout)
        # a body stopped by a timeout says nothing: its end is put in its place
        future.add_done_callback(lambda f: f.cancelled() or f.exception() is None or requests.put(("done",)))
        return _Job(future, requests, answers, timeout, name, future.cancel, queues.Empty)

    def close(self) -> None:
        self.pool.stop()
        self.pool.join(timeout=10)
        if self._manager is not None:
            self._manager.shutdown()


class DaskExecutor:
    """Rule bodies on a Dask cluster: a `distributed.Client`, or the address of a scheduler.
    Submitted with pure=False (a retry must run again, not share a key with the failed try). A
    running Dask task cannot be stopped: on a timeout or a cancel its worker is restarted."""

    kind = "dask"

    def __init__(self, client: Any, owned: bool = False):
        if isinstance(client, str):
            from distributed import Client
            client, owned = Client(client), True
        self.client, self.owned = client, owned

    def hold(self) -> bool:
        return True                   # a waiting body secedes: it holds no worker thread

    def release(self) -> None:
        pass

    def start(self, payload: bytes, timeout: float | None, name: str) -> _Job:
        import uuid

        from distributed import Queue

        from .remote import run
        tag = uuid.uuid4().hex
        requests, answers = Queue(f"nbbuild-{tag}-asks", client=self.client), Queue(f"nbbuild-{tag}-answers",
                                                                                 client=self.client)
        future = self.client.submit(run, payload, _QueueChannel(requests.name, answers.name, dask=True), pure=False)
        job = _Job(future, requests, answers, timeout, name, lambda: self._stop(future), TimeoutError)
        if timeout is not None:
            def overdue() -> None:
                if not future.done():
                    job.timed_out = True
                    job.stop()
            timer = threading.Timer(timeout, overdue)
            timer.daemon = True
            timer.start()
            future.add_done_callback(lambda _f: timer.cancel())
        return job

    def _stop(self, future: Any) -> None:
        try:
            processing = self.client.processing()
            workers = [w for w, keys in processing.items() if future.key in keys]
            future.cancel()
            if workers:
                self.client.restart_workers(workers)
        except Exception:  # the cluster went away: nothing left to stop
            log.debug("nbbuild: could not stop a Dask task", exc_info=True)

    def close(self) -> None:
        if self.owned:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()
