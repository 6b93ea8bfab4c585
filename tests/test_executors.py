"""Greenlet hubs on the calling thread and helper threads."""
from __future__ import annotations

import threading
from collections import deque

import pytest

from nbbuild.errors import Cancelled
from nbbuild.executors.hubs import HelperPool, Hubs


class Harness:
    """Hubs over a plain queue of work items; `waiting` holds the wakers of suspended greenlets."""

    def __init__(self, helpers, process):
        self.lock = threading.Lock()
        self.work: deque = deque()
        self.waiting: list = []
        self.pool = HelperPool()
        self.hubs = Hubs(self.pool, helpers, self.lock, lambda: self.work.popleft() if self.work else None,
                         process)

    def queue_and_wait(self, *items):
        with self.lock:
            self.work.extend(items)
            self.waiting.append(self.hubs.waker())
            self.hubs.notify()
        self.hubs.suspend()

    def wake_all(self):
        with self.lock:
            self.hubs.wake(self.waiting)
            self.waiting = []


def test_with_no_helpers_everything_runs_on_the_calling_thread():
    seen = []

    def process(item):
        seen.append((item, threading.get_ident()))
        if item == 3:
            h.wake_all()

    h = Harness(0, process)
    done = []
    h.hubs.run(lambda: (h.queue_and_wait(1, 2, 3), done.append(True)))
    assert done == [True]
    assert seen == [(1, threading.get_ident()), (2, threading.get_ident()), (3, threading.get_ident())]
    h.pool.shutdown()


def test_helpers_take_queued_work_and_wake_greenlets_across_threads():
    barrier = threading.Barrier(2, timeout=10)
    threads, left = set(), [2]

    def process(item):
        threads.add(threading.get_ident())
        barrier.wait()                   # both items must run at once: on two threads
        with h.lock:
            left[0] -= 1
            if not left[0]:
                h.hubs.wake(h.waiting)

    h = Harness(1, process)
    h.hubs.run(lambda: h.queue_and_wait("a", "b"))
    assert len(threads) == 2 and left == [0]
    h.pool.shutdown()


def test_an_interrupt_leaves_run_and_cancel_unwinds_the_suspended():
    unwound = []

    def process(item):
        raise KeyboardInterrupt

    h = Harness(0, process)

    def root():
        try:
            h.queue_and_wait("boom")
        except Cancelled:
            unwound.append("root")
            raise

    with pytest.raises(KeyboardInterrupt) as info:
        h.hubs.run(root)
    h.hubs.cancel(info.value, h.waiting)
    assert unwound == ["root"]
    h.pool.shutdown()


def test_the_helper_pool_reuses_its_threads():
    pool = HelperPool()
    seen = []
    done = threading.Semaphore(0)

    def job():
        seen.append(threading.current_thread().name)
        done.release()

    for _ in range(3):
        pool.run(job, 2)
        assert done.acquire(timeout=5) and done.acquire(timeout=5)
    assert len(seen) == 6 and set(seen) <= {"nbbuild-worker-1", "nbbuild-worker-2"}
    pool.shutdown()


def test_messages_on_a_jobs_queues_are_the_tagged_tuples_a_dask_queue_carries():
    from nbbuild.executors.messages import Done, GiveUp, Need, SendAgain, Values, unwire, wire
    sent = [Need(b"asked"), Done(), Values(b"blob"), SendAgain(), GiveUp()]
    assert [wire(m) for m in sent] == [("need", b"asked"), ("done",), ("values", b"blob"), ("restart",), ("failed",)]
    # msgpack gives a tuple back as a list
    assert [unwire(list(wire(m))) for m in sent] == sent
