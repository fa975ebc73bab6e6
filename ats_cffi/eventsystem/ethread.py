"""EThread: one OS thread running ATS's event loop.

One pass of the loop (``run_pass``):

1. take the cross-thread queue (one lock, one swap) into the thread's own queues;
2. run the events that are due: immediate ones in order, then timers in deadline order;
3. run the every-pass events (negative period, ATS's NET_PERIOD);
4. the poll step (``tail_cb.wait_for_activity``): sleep in ``epoll_wait`` no longer than
   the next timer, or not at all when work is already queued.

The default poll step waits on the thread's eventfd alone; ``initialize_thread_for_net``
replaces it with the NetHandler, which registers the same eventfd as an
``EVENTIO_ASYNC_SIGNAL`` EventIO. The event system imports nothing from the net layer.

Wake-ups: another thread that schedules onto this one writes the eventfd only when the
cross-thread queue goes from empty to non-empty (``schedule_imm_signal`` always writes);
scheduling onto the own thread never writes it. ``signal_count`` counts the writes.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ats_cffi.eventsystem.codes import EVENT_IMMEDIATE, EVENT_INTERVAL
from ats_cffi.eventsystem.continuation import Continuation, check_continuation
from ats_cffi.eventsystem.event import Event, check_number
from ats_cffi.sys import Epoll, EventFD

log = logging.getLogger("ats.iocore_thread")

_tls = threading.local()

#: Delay before an event whose mutex was busy is tried again (ATS's DELAY_FOR_RETRY).
DELAY_FOR_RETRY = 0.010
#: Longest sleep of an idle thread with no timer; it wakes earlier on any signal.
MAX_IDLE_WAIT_MS = 1000
#: Longest sleep while every-pass (negative period) events exist: they run each pass, so a
#: pass must come at least this often (ATS's net poll timeout).
EVERY_PASS_MAX_WAIT_MS = 10

REGULAR = "REGULAR"
DEDICATED = "DEDICATED"

Clock = Callable[[], float]


def this_ethread() -> EThread | None:
    """The EThread running the calling code, or None on another thread."""
    return getattr(_tls, "ethread", None)


def on_event_thread() -> bool:
    """True when a REGULAR EThread runs the calling code: it must never block (nor wait for
    a lock another thread holds)."""
    t = this_ethread()
    return t is not None and t.tt == REGULAR


class TailHandler(Protocol):
    """The poll step of an EThread (ATS's ``tail_cb``)."""

    def wait_for_activity(self, timeout_ms: int) -> None: ...

    def close(self) -> None: ...


class DefaultTailHandler:
    """Waits on the thread's eventfd only (no net layer installed)."""

    __slots__ = ("thread", "epoll")

    def __init__(self, thread: EThread) -> None:
        self.thread = thread
        self.epoll = Epoll(4)
        try:
            self.epoll.add(thread.evfd.fd, 1)  # EPOLLIN, level-triggered
        except BaseException:
            self.epoll.close()
            raise

    def wait_for_activity(self, timeout_ms: int) -> None:
        if self.epoll.wait(timeout_ms):
            self.thread.evfd.read()

    def close(self) -> None:
        self.epoll.close()


class EThread:
    """An event thread: regular (runs the loop) or dedicated (runs one event, e.g. an
    accept loop). Scheduling methods may be called from any thread."""

    def __init__(
        self,
        tt: str = REGULAR,
        etype: int = 0,
        id: int = 0,
        clock: Clock = time.monotonic,
        name: str | None = None,
    ) -> None:
        self.tt = tt
        self.etype = etype
        self.id = id
        self.clock = clock
        self.name = name or f"[ET {etype} {id}]"
        self.tid: int | None = None
        self.slots: list[Any] = []
        self.signal_count = 0
        #: Seconds before an event whose mutex was busy is tried again.
        self.retry_delay = DELAY_FOR_RETRY
        self.evfd: EventFD | None = None
        self.tail_cb: TailHandler | None = None
        self._ext: list[tuple[int, Event]] = []
        self._ext_lock = threading.Lock()
        self._ready: deque[tuple[int, Event]] = deque()
        self._heap: list[tuple[float, int, Event]] = []
        self._every_pass: list[tuple[int, Event]] = []
        self._seq = itertools.count(1)
        self._stop = False
        #: The thread ended (or was joined without running): nothing can be queued on it.
        self._released = False
        self._dropped = False
        self._os_thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        if tt == REGULAR:
            self.evfd = EventFD()
            try:
                self.tail_cb = DefaultTailHandler(self)
            except BaseException:
                self.evfd.close()
                raise

    # ------------------------------------------------------------------ scheduling

    def schedule_imm(
        self, cont: Continuation, callback_event: int = EVENT_IMMEDIATE, cookie: Any = None
    ) -> Event:
        """Run ``cont`` on this thread as soon as possible; returns the cancellable Event."""
        check_continuation("schedule_imm", cont)
        e = Event(cont, callback_event, cookie)
        self.schedule(e)
        return e

    def schedule_imm_signal(
        self, cont: Continuation, callback_event: int = EVENT_IMMEDIATE, cookie: Any = None
    ) -> Event:
        """As ``schedule_imm``, and always wake the thread (writes its eventfd)."""
        check_continuation("schedule_imm_signal", cont)
        e = Event(cont, callback_event, cookie)
        self.schedule(e, signal=True)
        return e

    def schedule_in(
        self,
        cont: Continuation,
        delay: float,
        callback_event: int = EVENT_INTERVAL,
        cookie: Any = None,
    ) -> Event:
        """Run ``cont`` ``delay`` seconds from now. ``ValueError`` for a negative delay."""
        check_continuation("schedule_in", cont)
        delay = check_number("schedule_in", "delay", delay)
        if delay < 0:
            raise ValueError(f"schedule_in: delay must be >= 0, got {delay}")
        e = Event(cont, callback_event, cookie, timeout_at=self.clock() + delay)
        self.schedule(e)
        return e

    def schedule_at(
        self,
        cont: Continuation,
        atime: float,
        callback_event: int = EVENT_INTERVAL,
        cookie: Any = None,
    ) -> Event:
        """Run ``cont`` when the thread's clock reaches ``atime``."""
        check_continuation("schedule_at", cont)
        atime = check_number("schedule_at", "atime", atime)
        if atime < 0:
            raise ValueError(f"schedule_at: atime must be >= 0, got {atime}")
        e = Event(cont, callback_event, cookie, timeout_at=max(atime, 1e-9))
        self.schedule(e)
        return e

    def schedule_every(
        self,
        cont: Continuation,
        period: float,
        callback_event: int = EVENT_INTERVAL,
        cookie: Any = None,
    ) -> Event:
        """Run ``cont`` every ``period`` seconds; a negative period means every loop pass."""
        check_continuation("schedule_every", cont)
        period = check_number("schedule_every", "period", period)
        if period == 0:
            raise ValueError("schedule_every: period must not be 0")
        at = self.clock() + period if period > 0 else 0.0
        e = Event(cont, callback_event, cookie, timeout_at=at, period=period)
        self.schedule(e)
        return e

    def schedule(self, e: Event, signal: bool = False) -> None:
        """Queue ``e`` on this thread (locally when called from it, else cross-thread)."""
        if self.tt != REGULAR:
            raise RuntimeError(f"schedule: {self.name} is a dedicated thread and runs no loop")
        e.ethread = self
        e.seq = next(self._seq)
        if self.tid == threading.get_ident():
            self._enqueue_local(e)
            return
        with self._ext_lock:
            if self._released:
                # The loop is gone: the event could never run. Dropped, not queued (it used
                # to pile up); not an error, as a thread may stop while others schedule.
                if not self._dropped:
                    self._dropped = True
                    log.warning("%s has stopped: events scheduled onto it are dropped", self.name)
                return
            # With its seq: a later re-schedule (or a second one of the same event) makes
            # this entry stale, so the event runs once, at its latest time.
            self._ext.append((e.seq, e))
            if signal or len(self._ext) == 1:
                self._write_signal_locked()

    def signal(self) -> None:
        """Wake the thread from its poll step."""
        with self._ext_lock:
            self._write_signal_locked()

    def _write_signal_locked(self) -> None:
        # Under _ext_lock, which _release also takes to detach the eventfd: written outside
        # it, the write could hit the eventfd just closed by the exiting thread (EBADF raised
        # into the scheduler) or, worse, a new fd that reused its number.
        self.signal_count += 1
        evfd = self.evfd
        if evfd is not None:
            evfd.write(1)

    def _enqueue_local(self, e: Event) -> None:
        if e.period < 0:
            self._every_pass.append((e.seq, e))
        elif e.timeout_at <= 0:
            self._ready.append((e.seq, e))
        else:
            heapq.heappush(self._heap, (e.timeout_at, e.seq, e))

    # ------------------------------------------------------------------ the loop

    def process_event(self, e: Event, callback_event: int) -> None:
        """Deliver ``e`` with its mutex held; retry later if the mutex is busy."""
        m = e.mutex
        if m is not None and not m.try_lock():
            if e.period >= 0:  # an every-pass event is simply tried on the next pass
                e.timeout_at = self.clock() + self.retry_delay
                e.seq = next(self._seq)
                heapq.heappush(self._heap, (e.timeout_at, e.seq, e))
            return
        seq = e.seq
        try:
            if e.cancelled:
                return
            try:
                e.continuation.handle_event(callback_event, e)  # type: ignore[union-attr]
            except Exception:
                log.exception("%s: handler of %r raised", self.name, e)
            if e.period > 0 and not e.cancelled and e.seq == seq:
                e.timeout_at = max(self.clock(), e.timeout_at) + e.period
                e.seq = next(self._seq)
                heapq.heappush(self._heap, (e.timeout_at, e.seq, e))
        finally:
            if m is not None:
                m.unlock()

    def run_pass(self, max_wait_ms: int = MAX_IDLE_WAIT_MS) -> None:
        """One pass of the loop (see the module docstring)."""
        if self._ext:
            with self._ext_lock:
                batch, self._ext = self._ext, []
            enqueue = self._enqueue_local
            for seq, e in batch:
                if e.seq == seq:
                    enqueue(e)
        ready = self._ready
        heap = self._heap
        if heap:
            now = self.clock()
            while heap and heap[0][0] <= now:
                _, seq, e = heapq.heappop(heap)
                if e.seq == seq and not e.cancelled:
                    ready.append((seq, e))
        # Events queued by the handlers below run on the next pass, after its poll step.
        for _ in range(len(ready)):
            seq, e = ready.popleft()
            if e.seq == seq and not e.cancelled:
                self.process_event(e, e.callback_event)
        every = self._every_pass
        if every:
            stale = False
            for i in range(len(every)):
                seq, e = every[i]
                if e.seq != seq or e.cancelled:
                    stale = True
                else:
                    self.process_event(e, e.callback_event)
            if stale:
                self._every_pass = [
                    (s, e) for s, e in self._every_pass if e.seq == s and not e.cancelled
                ]
        if ready or self._ext or self._stop:
            timeout = 0
        elif heap:
            timeout = self._ms_until(heap[0][0], max_wait_ms)
        else:
            timeout = max_wait_ms
        if self._every_pass and timeout > EVERY_PASS_MAX_WAIT_MS:
            timeout = EVERY_PASS_MAX_WAIT_MS
        self.tail_cb.wait_for_activity(timeout)  # type: ignore[union-attr]

    def next_timer_ms(self, cap_ms: int) -> int:
        """Milliseconds until the next timer, capped; 0 when work is queued."""
        if self._ready or self._ext:
            return 0
        heap = self._heap
        if not heap:
            return cap_ms
        return self._ms_until(heap[0][0], cap_ms)

    def _ms_until(self, deadline: float, cap_ms: int) -> int:
        # Capped before math.ceil: a far deadline (schedule_in(cont, inf)) is an infinite
        # float here, and math.ceil(inf) raises OverflowError, which would end the loop.
        ms = (deadline - self.clock()) * 1000.0
        if ms <= 0:
            return 0
        return cap_ms if ms >= cap_ms else math.ceil(ms)

    # ------------------------------------------------------------------ lifecycle

    def start(
        self,
        init: Callable[[EThread], None] | None = None,
        oneevent: Event | None = None,
    ) -> None:
        """Start the OS thread; ``init(thread)`` runs on it first. Returns once it ran."""
        if self._os_thread is not None:
            raise RuntimeError(f"start: {self.name} was already started")
        t = threading.Thread(target=self._main, args=(init, oneevent), name=self.name, daemon=True)
        self._os_thread = t
        t.start()
        self._started.wait()
        if self._start_error is not None:
            t.join()
            raise self._start_error

    def _main(self, init: Callable[[EThread], None] | None, oneevent: Event | None) -> None:
        _tls.ethread = self
        self.tid = threading.get_ident()
        try:
            try:
                if init is not None:
                    init(self)
            except BaseException as exc:
                self._start_error = exc
                return
            finally:
                self._started.set()
            if self.tt == DEDICATED:
                if oneevent is not None and not oneevent.cancelled:
                    oneevent.ethread = self
                    try:
                        oneevent.continuation.handle_event(  # type: ignore[union-attr]
                            oneevent.callback_event, oneevent
                        )
                    except Exception:
                        log.exception("%s: dedicated handler raised", self.name)
                return
            while not self._stop:
                try:
                    self.run_pass()
                except Exception:
                    # Handlers' exceptions are caught where they are called; one that gets
                    # here is a bug in the loop or its poll step. Log it and keep the thread
                    # (and every connection on it) alive.
                    log.exception("%s: error in the event loop pass", self.name)
                except BaseException as exc:  # SystemExit/KeyboardInterrupt from a handler
                    log.critical("%s: the event loop ends: %r", self.name, exc)
                    raise
        finally:
            self._release()

    def stop(self) -> None:
        """Ask the loop to end after its current pass (from any thread)."""
        self._stop = True
        if self.evfd is not None:
            self.signal()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the OS thread to end; True if it has (or never started)."""
        t = self._os_thread
        if t is None:
            self._release()
            return True
        t.join(timeout)
        return not t.is_alive()

    def _release(self) -> None:
        tail, self.tail_cb = self.tail_cb, None
        if tail is not None:
            tail.close()
        with self._ext_lock:
            evfd, self.evfd = self.evfd, None
            self._released = True  # schedule() refuses from now on
            self._ext.clear()
        if evfd is not None:
            evfd.close()
        self.slots = []
        self._ready.clear()
        self._heap.clear()
        self._every_pass.clear()

    @property
    def is_alive(self) -> bool:
        t = self._os_thread
        return t is not None and t.is_alive()

    def get_slot(self, offset: int) -> Any:
        """The per-thread object allocated at ``offset`` by ``EventProcessor.allocate``."""
        return self.slots[offset]

    def __repr__(self) -> str:
        return f"<EThread {self.name} {self.tt}>"
