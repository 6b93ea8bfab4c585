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

from ..errors import Cancelled

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
            # its workers' warnings (a body stopped by a restart) would reach the cell's output
            return DaskExecutor(distributed.Client(processes=True, dashboard_address=None, n_workers=max(workers, 2),
                                                   threads_per_worker=1, silence_logs=logging.ERROR), owned=True)
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
    """The body's side, over two queues (a multiprocessing Manager's, or Dask's by name). On Dask,
    `stopped()` says whether the kernel stopped the body before it began (a flag by name)."""

    def __init__(self, requests: Any, answers: Any, dask: bool = False, flag: str | None = None):
        self.requests, self.answers, self.dask, self.flag = requests, answers, dask, flag

    def stopped(self) -> bool:
        if not self.dask or self.flag is None:
            return False
        from distributed import Event
        return Event(self.flag).is_set()

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
    """The kernel's side of one body elsewhere. `poll`: seconds between looks at the future while
    no message comes (a Manager queue); None blocks (a Dask queue: its `get(timeout=)` times out
    on the scheduler, which logs each time out as an error with a traceback, in the kernel when
    the cluster is local). Without a poll, the future's end puts ("done",) itself."""

    def __init__(self, future: Any, requests: Any, answers: Any, timeout: float | None, name: str,
                 stop: Callable[[_Job], None], empty: type[BaseException], poll: float | None):
        self.future, self.requests, self.answers = future, requests, answers
        self.timeout, self.name, self._stop, self.empty, self.poll = timeout, name, stop, empty, poll
        self.timed_out = False
        self.asking = False     # the body waits for an answer
        self.ends_itself = False   # it was answered ("failed",): it stops by itself
        self.flag: str | None = None   # Dask: the name of the flag that stops it before it begins

    def next(self) -> tuple:
        while True:
            try:
                message = self.requests.get(timeout=self.poll) if self.poll else self.requests.get()
            except self.empty:
                if self.future.done():    # it ended without a word (a worker that died)
                    return ("done",)
                continue
            except Exception:  # the queue went with its cluster: nothing more will come
                return ("done",)
            self.asking = message[0] == "need"
            return message

    def answer(self, message: tuple) -> None:
        self.asking = False
        self.ends_itself = message[0] == "failed"
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
        self._stop(self)
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

        from .worker import run
        with self._lock:
            if self._manager is None:
                self._manager = self._context.Manager()
            requests, answers = self._manager.Queue(), self._manager.Queue()
        future = self.pool.schedule(run, args=(payload, _QueueChannel(requests, answers)), timeout=timeout)
        # a body stopped by a timeout says nothing: its end is put in its place
        future.add_done_callback(lambda f: f.cancelled() or f.exception() is None or requests.put(("done",)))
        return _Job(future, requests, answers, timeout, name, lambda _job: future.cancel(), queues.Empty, 1.0)

    def close(self) -> None:
        self.pool.stop()
        self.pool.join(timeout=10)
        if self._manager is not None:
            self._manager.shutdown()


async def _exit_worker() -> None:
    """Run in a Dask worker's event loop (a coroutine: Client.run sends those without waiting)."""
    os._exit(1)


class DaskExecutor:
    """Rule bodies on a Dask cluster: a `distributed.Client`, or the address of a scheduler.
    Submitted with pure=False (a retry must run again, not share a key with the failed try).

    Stopping a body (a cancel, a timeout): one that waits for the kernel is answered "failed" and
    ends by itself. One that runs cannot be stopped in its thread: its worker's process is ended
    and its nanny starts a fresh one, in the background (that takes seconds, more on a busy
    machine, and an interrupt must return at once); `close()` waits for the stops under way,
    within RESTART_WAIT seconds. Which workers to end is what the scheduler says they run once
    the job's flag is set: a body looks at its flag when it begins (and does not begin when it
    is set), so one that began before is running by then, where the scheduler says, and one
    that begins after does not run. (Looking first and cancelling after, a body the scheduler
    sent to a worker in between ran on, its worker's thread taken, for as long as it took.)"""

    kind = "dask"
    RESTART_WAIT = 60.0

    def __init__(self, client: Any, owned: bool = False):
        if isinstance(client, str):
            from distributed import Client
            client, owned = Client(client), True
        self.client, self.owned = client, owned
        self._stopping: queue.Queue[Any] = queue.Queue()
        self._stopper: threading.Thread | None = None
        self._lock = threading.Lock()

    def hold(self) -> bool:
        return True                   # a waiting body secedes: it holds no worker thread

    def release(self) -> None:
        pass

    def start(self, payload: bytes, timeout: float | None, name: str) -> _Job:
        import uuid

        from distributed import Queue

        from .worker import run
        tag = uuid.uuid4().hex
        requests, answers = Queue(f"nbbuild-{tag}-asks", client=self.client), Queue(f"nbbuild-{tag}-answers",
                                                                                 client=self.client)
        flag = f"nbbuild-{tag}-stop"
        future = self.client.submit(run, payload, _QueueChannel(requests.name, answers.name, dask=True, flag=flag),
                                    pure=False)
        job = _Job(future, requests, answers, timeout, name, self._stop, TimeoutError, None)
        job.flag = flag

        def ended(_future: Any) -> None:      # however it ended: the watcher blocks on the queue
            try:
                requests.put(("done",))
            except Exception:  # the cluster went away: the watcher's get fails too
                pass
        future.add_done_callback(ended)
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

    def _stop(self, job: _Job) -> None:
        if job.asking:
            try:
                job.answer(("failed",))       # it waits for us: told so, it stops by itself
            except Exception:  # the cluster went away
                pass
        if job.ends_itself:
            job.future.cancel()
            return
        with self._lock:
            self._stopping.put(job)
            if self._stopper is None or not self._stopper.is_alive():
                self._stopper = threading.Thread(target=self._restarts, name="nbbuild-dask-stop", daemon=True)
                self._stopper.start()

    def _restarts(self) -> None:
        """Stops the workers of the futures to stop, a batch at a time, until none is left: each
        such worker's process ends at once (`os._exit`, run in its event loop, which answers
        while its threads are busy) and its nanny starts a fresh one. (`Client.restart_workers`
        asks the worker to close first, which waited past a minute here for a body that rejoins
        a thread pool a sleeping body holds.) A worker without a nanny is left running."""
        from distributed import Event
        while True:
            with self._lock:
                jobs = []
                while not self._stopping.empty():
                    jobs.append(self._stopping.get_nowait())
                if not jobs:
                    self._stopper = None
                    return
            futures = [job.future for job in jobs]
            try:
                for job in jobs:       # first: from now on none of them begins (see the class)
                    Event(job.flag, client=self.client).set()
                keys = {f.key for f in futures}
                workers = [w for w, running in self.client.processing().items() if keys & set(running)]
                for f in futures:
                    f.cancel()
                known = self.client.scheduler_info().get("workers", {})
                nannied = [w for w in workers if known.get(w, {}).get("nanny")]
                if len(nannied) < len(workers):
                    log.warning("nbbuild: a Dask worker without a nanny cannot be stopped: its body runs on")
                if nannied:
                    self.client.run(_exit_worker, workers=nannied, wait=False)
                    self._wait_gone(nannied)
            except Exception:  # the cluster went away: nothing left to stop
                log.debug("nbbuild: could not stop a Dask task", exc_info=True)

    def _wait_gone(self, workers: list[str], seconds: float = 30.0) -> None:
        import time
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not set(workers) & set(self.client.scheduler_info().get("workers", {})):
                return
            time.sleep(0.05)      # the scheduler notices a closed worker within a heartbeat

    def settle(self, wait: float) -> bool:
        """Wait (at most `wait` seconds) for the stops under way; True when none is left."""
        with self._lock:
            stopper = self._stopper
        if stopper is not None:
            stopper.join(wait)
            return not stopper.is_alive()
        return True

    def close(self) -> None:
        if not self.settle(self.RESTART_WAIT):
            log.warning("nbbuild: Dask workers were still restarting after %g s", self.RESTART_WAIT)
        if self.owned:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()
