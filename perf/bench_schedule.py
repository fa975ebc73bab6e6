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
from typing import Any

import pyperf

from ats_cffi.eventsystem import Continuation, EventProcessor, ProxyMutex


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


def ats_same_thread(loops: int) -> float:
    ep = EventProcessor()
    ep.start(1)
    try:
        thread = ep.threads()[0]
        counter = _Counter()
        counter.target = loops
        start: dict[str, float] = {}

        def burst(event: int, e: Any) -> None:
            start["t0"] = time.perf_counter()
            schedule = thread.schedule_imm
            for _ in range(loops):
                schedule(counter)

        thread.schedule_imm_signal(Continuation(ProxyMutex(), burst))
        if not counter.done.wait(60):
            raise RuntimeError("same-thread burst did not finish")
        return counter.t1 - start["t0"]
    finally:
        ep.shutdown()


def ats_cross_thread(loops: int) -> float:
    ep = EventProcessor()
    ep.start(1)
    try:
        thread = ep.threads()[0]
        counter = _Counter()
        counter.target = loops
        schedule = thread.schedule_imm
        t0 = time.perf_counter()
        for _ in range(loops):
            schedule(counter)
        if not counter.done.wait(60):
            raise RuntimeError("cross-thread burst did not finish")
        return counter.t1 - t0
    finally:
        ep.shutdown()


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
