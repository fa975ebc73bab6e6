"""Schedule throughput of the event system vs asyncio (pyperf; ``-o out.json``).

Pairs (``python perf/table.py out.json``; the asyncio side is named ``-stdlib``):

- ``schedule_same_thread``: a handler running on an EThread schedules N immediate events
  onto its own thread, timed until the last one ran; vs ``loop.call_soon`` N callbacks
  from inside a running asyncio loop, timed until the last one ran.
- ``schedule_cross_thread``: the main thread schedules N immediate events onto an EThread
  (``schedule_imm``; the eventfd is written once per burst), timed until the last one ran;
  vs ``loop.call_soon_threadsafe`` onto an asyncio loop running in another thread.

Values are per scheduled event (``inner_loops``-free: the loop count is N).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyperf

from ats_cffi.eventsystem import Continuation, EThread, EventProcessor, ProxyMutex


class _Counter(Continuation):
    def __init__(self) -> None:
        super().__init__(ProxyMutex())
        self.n = 0
        self.target = 0
        self.done = threading.Event()
        self.t1 = 0.0
        self.set_handler(self.tick)

    def tick(self, event: int, e: Any) -> None:
        self.n += 1
        if self.n == self.target:
            self.t1 = time.perf_counter()
            self.done.set()

    def wait(self, burst: str) -> None:
        """Until the ``target``-th event ran; ``RuntimeError`` naming ``burst`` after 60 s."""
        if not self.done.wait(60):
            raise RuntimeError(f"{burst} burst did not finish")


@contextmanager
def _one_thread(loops: int) -> Iterator[tuple[EThread, _Counter]]:
    """A fresh processor's one event thread, and a counter that ``loops`` events complete;
    the processor is shut down on the way out."""
    ep = EventProcessor()
    ep.start(1)
    try:
        counter = _Counter()
        counter.target = loops
        yield ep.threads()[0], counter
    finally:
        ep.shutdown()


def ats_same_thread(loops: int) -> float:
    with _one_thread(loops) as (thread, counter):
        start: dict[str, float] = {}

        def burst(event: int, e: Any) -> None:
            start["t0"] = time.perf_counter()
            schedule = thread.schedule_imm
            for _ in range(loops):
                schedule(counter)

        thread.schedule_imm_signal(Continuation(ProxyMutex(), burst))
        counter.wait("same-thread")
        return counter.t1 - start["t0"]


def ats_cross_thread(loops: int) -> float:
    with _one_thread(loops) as (thread, counter):
        schedule = thread.schedule_imm
        t0 = time.perf_counter()
        for _ in range(loops):
            schedule(counter)
        counter.wait("cross-thread")
        return counter.t1 - t0


def asyncio_same_thread(loops: int) -> float:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        state = {"n": 0}

        def tick() -> None:
            state["n"] += 1
            if state["n"] == loops:
                fut.set_result(time.perf_counter())

        t0 = time.perf_counter()
        call_soon = loop.call_soon
        for _ in range(loops):
            call_soon(tick)
        return await fut - t0

    return asyncio.run(main())


def asyncio_cross_thread(loops: int) -> float:
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever)
    th.start()
    try:
        done = threading.Event()
        state = {"n": 0, "t1": 0.0}

        def tick() -> None:
            state["n"] += 1
            if state["n"] == loops:
                state["t1"] = time.perf_counter()
                done.set()

        call = loop.call_soon_threadsafe
        t0 = time.perf_counter()
        for _ in range(loops):
            call(tick)
        if not done.wait(60):
            raise RuntimeError("asyncio cross-thread burst did not finish")
        return state["t1"] - t0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        th.join()
        loop.close()


def main() -> None:
    runner = pyperf.Runner()
    runner.bench_time_func("schedule_same_thread-ats_cffi", ats_same_thread)
    runner.bench_time_func("schedule_same_thread-stdlib", asyncio_same_thread)
    runner.bench_time_func("schedule_cross_thread-ats_cffi", ats_cross_thread)
    runner.bench_time_func("schedule_cross_thread-stdlib", asyncio_cross_thread)


if __name__ == "__main__":
    main()
