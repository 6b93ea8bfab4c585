"""Executors for bodies that run elsewhere: a process pool (pebble) and a Dask cluster.

Contract:
- `make_executor(spec, workers)` gives the executor for "processes", "dask", a
  distributed.Client or a Dask scheduler's address; a ValueError in one line for anything else.
  "dask" is the process's default Client when it has one, else a LocalCluster of its own (closed
  with the Build).
- Both are `Executor`s, their jobs `Job`s and the body's side of their queues a `Channel`: the
  protocols of executors/protocol.py, which say what each method does.
The kernel's side of a body run elsewhere is executors/kernel.py; the worker's is executors/worker.py.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Callable

from .messages import Done, GiveUp, Message, Need, unwire, wire
from .protocol import Executor

__all__ = ["ProcessExecutor", "DaskExecutor", "make_executor"]

log = logging.getLogger("nbbuild")
_DONE = wire(Done())       # as put on a queue

def make_executor(spec: Any, workers: int) -> Executor:
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

    def ask(self, message: Need) -> Message:
        requests, answers = self._queues()
        requests.put(wire(message))
        if not self.dask:
            return unwire(answers.get())
        from distributed import rejoin, secede
        secede()                  # waiting for the kernel must not hold a worker thread
        try:
            return unwire(answers.get())
        finally:
            rejoin()

    def done(self) -> None:
        self._queues()[0].put(_DONE)


class _Job:
    """The kernel's side of one body elsewhere. `poll`: seconds between looks at the future while
    no message comes (a Manager queue); None blocks (a Dask queue: its `get(timeout=)` times out
    on the scheduler, which logs each time out as an error with a traceback, in the kernel when
    the cluster is local). Without a poll, the future's end puts Done itself."""

    def __init__(self, future: Any, requests: Any, answers: Any, timeout: float | None, name: str,
                 stop: Callable[[_Job], None], empty: type[BaseException], poll: float | None):
        self.future, self.requests, self.answers = future, requests, answers
        self.timeout, self.name, self._stop, self.empty, self.poll = timeout, name, stop, empty, poll
        self.timed_out = False
        self.asking = False     # the body waits for an answer
        self.ends_itself = False   # it was answered GiveUp: it stops by itself
        self.flag: str | None = None   # Dask: the name of the flag that stops it before it begins

    def next(self) -> Message:
        while True:
            try:
                message = unwire(self.requests.get(timeout=self.poll) if self.poll else self.requests.get())
            except self.empty:
                if self.future.done():    # it ended without a word (a worker that died)
                    return Done()
                continue
            except Exception:  # the queue went with its cluster: nothing more will come
                return Done()
            self.asking = isinstance(message, Need)
            return message

    def answer(self, message: Message) -> None:
        self.asking = False
        self.ends_itself = isinstance(message, GiveUp)
        self.answers.put(wire(message))

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
            self.requests.put(_DONE)
        except Exception:  # the queue went with the worker: the watcher sees the future done
            pass


class ProcessExecutor:
    """Rule bodies in a pool of worker processes (pebble: a task past its timeout, or cancelled,
    has its worker process stopped and replaced; the pool stays usable). Workers are spawned, not
    forked: a kernel has threads. A Manager process carries the bodies' requests for values."""

    kind = "processes"

    def __init__(self, workers: int | None = None):
        import pebble
        self.workers = workers or (os.cpu_count() or 1)
        self._context = _spawn_keeping_locks()
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
        future.add_done_callback(lambda f: f.cancelled() or f.exception() is None or requests.put(_DONE))
        return _Job(future, requests, answers, timeout, name, lambda _job: future.cancel(), queues.Empty, 1.0)

    def close(self) -> None:
        self.pool.stop()
        self.pool.join(timeout=10)
        # every worker pebble started has exited: no one reads the locks' names any more
        self._context.kept.clear()
        if self._manager is not None:
            self._manager.shutdown()


def _spawn_keeping_locks() -> Any:
    """The spawn context, keeping each lock made through it (pebble's channel locks) in `kept`.
    A spawned worker opens its channel's locks by name when it reads its startup data, which on
    a busy machine comes a second or more after its start; and a lock's name is unlinked when
    the kernel's last reference to it goes. pebble's stop lets go of them before it stops its
    workers, one after another: a worker still starting then (the one that replaced a cancelled
    body's, say) failed with a page of traceback on fd 2, the kernel's cell output. Kept, the
    names go once the pool has joined every worker (`close`)."""
    from multiprocessing.context import SpawnContext

    class Context(SpawnContext):
        def __init__(self) -> None:
            self.kept: list[Any] = []

        def Lock(self) -> Any:
            self.kept.append(lock := super().Lock())
            return lock

        def RLock(self) -> Any:
            self.kept.append(lock := super().RLock())
            return lock
    return Context()


async def _exit_worker() -> None:
    """Run in a Dask worker's event loop (a coroutine: Client.run sends those without waiting)."""
    os._exit(1)


class DaskExecutor:
    """Rule bodies on a Dask cluster: a `distributed.Client`, or the address of a scheduler.
    Submitted with pure=False (a retry must run again, not share a key with the failed try).

    Stopping a body (a cancel, a timeout): one that waits for the kernel is answered GiveUp and
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
        self._live: set[_Job] = set()     # jobs not over: close stops any an interrupt missed

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
                requests.put(_DONE)
            except Exception:  # the cluster went away: the watcher's get fails too
                pass
        future.add_done_callback(ended)
        with self._lock:
            self._live.add(job)
        future.add_done_callback(lambda _f: self._forget(job))
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

    def _forget(self, job: _Job) -> None:
        with self._lock:
            self._live.discard(job)

    def _stop(self, job: _Job) -> None:
        if job.asking:
            try:
                job.answer(GiveUp())       # it waits for us: told so, it stops by itself
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
        # a body whose job no one stopped would run on in its worker, its thread taken, after the
        # Build is gone (seen once after an interrupt: only the job of the body waiting for the
        # kernel was stopped, not those of the two it waited for)
        with self._lock:
            missed = [job for job in self._live if not job.future.done()]
        for job in missed:
            self._stop(job)
        if not self.settle(self.RESTART_WAIT):
            log.warning("nbbuild: Dask workers were still restarting after %g s", self.RESTART_WAIT)
        if self.owned:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()
