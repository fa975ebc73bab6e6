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
from typing import Any, Final, Protocol

from ats_cffi._native import lib
from ats_cffi.eventsystem.codes import EVENT_IMMEDIATE, EVENT_INTERVAL
from ats_cffi.eventsystem.continuation import Continuation, check_continuation, deliver
from ats_cffi.eventsystem.current import DEDICATED, REGULAR, set_this_ethread
from ats_cffi.eventsystem.current import on_event_thread as on_event_thread  # re-exported
from ats_cffi.eventsystem.current import this_ethread as this_ethread  # re-exported
from ats_cffi.eventsystem.event import (
    Event,
    check_callback_event,
    check_number,
    check_period,
    check_time,
    new_event,
)
from ats_cffi.eventsystem.mutex import ProxyMutex, get_ident
from ats_cffi.sys import Epoll, EventFD

log = logging.getLogger("ats.iocore_thread")

#: Delay before an event whose mutex was busy is tried again (ATS's DELAY_FOR_RETRY).
DELAY_FOR_RETRY: Final = 0.010
#: Longest sleep of an idle thread with no timer; it wakes earlier on any signal.
MAX_IDLE_WAIT_MS: Final = 1000
#: Longest sleep while every-pass (negative period) events exist: they run each pass, so a
#: pass must come at least this often (ATS's net poll timeout).
EVERY_PASS_MAX_WAIT_MS: Final = 10

#: Largest wait a poll step accepts: ``epoll_wait`` takes its timeout as a C int.
MAX_WAIT_MS: Final[int] = lib.INT_MAX
#: Bound once: compiled, a plain imported name is looked up in the module's dict per use.
_REGULAR: Final = REGULAR

# One sequence for every thread: an event moved from one thread to another gets a number
# no entry on the first thread can carry, so the entry left there is stale, never run.
# (Per-thread counters could collide and deliver the moved event twice.)
_SEQ = itertools.count(1)
_heappush: Final = heapq.heappush
_heappop: Final = heapq.heappop

Clock = Callable[[], float]


def _check_int(call: str, name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{call}: {name} must be an int, not {type(value).__name__}")
    return value


def check_wait_ms(call: str, name: str, value: Any) -> int:
    """``value`` (a wait in milliseconds for ``epoll_wait``): an int in 0..MAX_WAIT_MS."""
    _check_int(call, name, value)
    if not 0 <= value <= MAX_WAIT_MS:
        raise ValueError(f"{call}: {name} must be between 0 and {MAX_WAIT_MS}, got {value}")
    return int(value)


def check_clock(call: str, clock: Any) -> Clock:
    """``clock``, once it is callable and its reading is a number that is not NaN."""
    if not callable(clock):
        raise TypeError(f"{call}: clock must be callable, not {type(clock).__name__}")
    check_number(call, "clock()", clock())
    return clock


class TailHandler(Protocol):
    """The poll step of an EThread (ATS's ``tail_cb``)."""

    def wait_for_activity(self, timeout_ms: int) -> None: ...

    def close(self) -> None: ...


class DefaultTailHandler:
    """Waits on the thread's eventfd only (no net layer installed)."""

    __slots__ = ("thread", "epoll")

    def __init__(self, thread: EThread) -> None:
        self.thread = thread
        evfd = thread.evfd
        assert evfd is not None  # a REGULAR thread's: made with the thread
        self.epoll = Epoll(4)
        try:
            self.epoll.add(evfd.fd, 1)  # EPOLLIN, level-triggered
        except BaseException:
            self.epoll.close()
            raise

    def wait_for_activity(self, timeout_ms: int) -> None:
        if self.epoll.wait(timeout_ms):
            evfd = self.thread.evfd
            if evfd is not None:
                evfd.read()

    def close(self) -> None:
        self.epoll.close()


class EThread:
    """An event thread: regular (runs the loop) or dedicated (runs one event, e.g. an
    accept loop). Scheduling methods may be called from any thread."""

    def __init__(
        self,
        tt: Any = REGULAR,
        etype: Any = 0,
        id: Any = 0,
        clock: Any = time.monotonic,
        name: Any = None,
    ) -> None:
        """``ValueError``/``TypeError`` for a ``tt`` other than REGULAR/DEDICATED, a
        non-int ``etype``/``id``, a ``clock`` that is not callable or reads NaN, or a
        ``name`` that is not a str. (The arguments are typed ``Any``, as those of every
        public method that checks its own: compiled, a typed parameter would be refused
        before the check, with mypyc's message instead of one naming the call.)"""
        if tt != REGULAR and tt != DEDICATED:
            raise ValueError(f"EThread: tt must be REGULAR or DEDICATED, got {tt!r}")
        _check_int("EThread", "etype", etype)
        _check_int("EThread", "id", id)
        check_clock("EThread", clock)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"EThread: name must be a str or None, not {type(name).__name__}")
        self.tt: str = tt
        self.etype: int = etype
        self.id: int = id
        self.clock: Clock = clock
        self.name: str = name or f"[ET {etype} {id}]"
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
        # The bound ``__next__``: compiled, ``next(it)`` looks ``next`` up by name each call.
        self._next_seq: Callable[[], int] = _SEQ.__next__
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
        self, cont: Any, callback_event: Any = EVENT_IMMEDIATE, cookie: Any = None
    ) -> Event:
        """Run ``cont`` on this thread as soon as possible; returns the cancellable Event."""
        check_continuation("schedule_imm", cont, True)
        return self._schedule(new_event("schedule_imm", cont, callback_event, cookie), False)

    def schedule_imm_signal(
        self, cont: Any, callback_event: Any = EVENT_IMMEDIATE, cookie: Any = None
    ) -> Event:
        """As ``schedule_imm``, and always wake the thread (writes its eventfd)."""
        check_continuation("schedule_imm_signal", cont, True)
        e = new_event("schedule_imm_signal", cont, callback_event, cookie)
        return self._schedule(e, True)

    def schedule_in(
        self,
        cont: Any,
        delay: Any,
        callback_event: Any = EVENT_INTERVAL,
        cookie: Any = None,
    ) -> Event:
        """Run ``cont`` ``delay`` seconds from now. ``ValueError`` for a negative delay."""
        check_continuation("schedule_in", cont, True)
        at = self.clock() + check_time("schedule_in", "delay", delay)
        return self._schedule(new_event("schedule_in", cont, callback_event, cookie, at), False)

    def schedule_at(
        self,
        cont: Any,
        atime: Any,
        callback_event: Any = EVENT_INTERVAL,
        cookie: Any = None,
    ) -> Event:
        """Run ``cont`` when the thread's clock reaches ``atime``."""
        check_continuation("schedule_at", cont, True)
        # Above 0 even for atime 0: a timer (a 0 would make it an immediate event).
        at = max(check_time("schedule_at", "atime", atime), 1e-9)
        return self._schedule(new_event("schedule_at", cont, callback_event, cookie, at), False)

    def schedule_every(
        self,
        cont: Any,
        period: Any,
        callback_event: Any = EVENT_INTERVAL,
        cookie: Any = None,
    ) -> Event:
        """Run ``cont`` every ``period`` seconds; a negative period means every loop pass."""
        check_continuation("schedule_every", cont, True)
        period = check_period("schedule_every", period)
        at = self.clock() + period if period > 0 else 0.0
        e = new_event("schedule_every", cont, callback_event, cookie, at, period)
        return self._schedule(e, False)

    def schedule(self, e: Any, signal: Any = False) -> None:
        """Queue ``e`` on this thread (locally when called from it, else cross-thread).

        ``TypeError`` unless ``e`` is an Event whose continuation is a Continuation and
        whose ``callback_event`` is an int and ``timeout_at``/``period`` are numbers;
        ``ValueError`` for a NaN time. An event still queued on another thread moves here:
        the entry left there is stale and never runs.
        """
        if not isinstance(e, Event):
            raise TypeError(f"schedule: e must be an Event, not {type(e).__name__}")
        # Read untyped: compiled, a typed read would itself raise for a bad field (with
        # mypyc's message, not the one _check_event gives).
        fields: Any = e
        at = fields.timeout_at
        period = fields.period
        if (
            type(at) is not float
            or type(period) is not float
            or at != at
            or period != period
            or fields.mutex is None
            or type(fields.callback_event) is not int
            or not isinstance(fields.continuation, Continuation)
        ):
            self._check_event(e)
        self._schedule(e, bool(signal))

    @staticmethod
    def _check_event(e: Any) -> None:
        # schedule()'s slow path: anything but floats, a mutex, a plain int code and a
        # Continuation. ``e`` untyped: its fields may hold anything here.
        cont = e.continuation
        if not isinstance(cont, Continuation):
            raise TypeError(
                f"schedule: e.continuation must be a Continuation, not {type(cont).__name__}"
            )
        check_continuation("schedule", cont, True)
        check_callback_event("schedule", e.callback_event, "e.callback_event")
        at = check_number("schedule", "e.timeout_at", e.timeout_at)
        period = check_number("schedule", "e.period", e.period)
        if e.mutex is None:
            e.mutex = cont.mutex
        elif not isinstance(e.mutex, ProxyMutex):
            raise TypeError(f"schedule: e.mutex must be a ProxyMutex, not {type(e.mutex).__name__}")
        e.timeout_at = at
        e.period = period

    def _schedule(self, e: Event, signal: bool) -> Event:
        # schedule() for arguments already checked (the schedulers' path); returns ``e``.
        if self.tt != _REGULAR:
            raise RuntimeError(f"schedule: {self.name} is a dedicated thread and runs no loop")
        e.ethread = self
        e.seq = self._next_seq()
        if self.tid == get_ident():
            self._enqueue_local(e)
            return e
        with self._ext_lock:
            if self._released:
                # The loop is gone: the event could never run. Dropped, not queued (it used
                # to pile up); not an error, as a thread may stop while others schedule.
                if not self._dropped:
                    self._dropped = True
                    log.warning("%s has stopped: events scheduled onto it are dropped", self.name)
                return e
            # With its seq: a later re-schedule (or a second one of the same event) makes
            # this entry stale, so the event runs once, at its latest time.
            self._ext.append((e.seq, e))
            if signal or len(self._ext) == 1:
                self._write_signal_locked()
        return e

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
        # Read as floats (compiled: unboxed, compared natively); a field spoiled after it
        # was checked raises TypeError here, which the caller's batch logs.
        period: float = e.period
        at: float = e.timeout_at
        if period < 0:
            self._every_pass.append((e.seq, e))
        elif at <= 0:
            self._ready.append((e.seq, e))
        else:
            _heappush(self._heap, (e.timeout_at, e.seq, e))

    # ------------------------------------------------------------------ the loop

    def process_event(self, e: Event, callback_event: int) -> None:
        """Deliver ``e`` with its mutex held; retry later if the mutex is busy."""
        m = e.mutex
        if m is not None and not m.try_lock():
            if e.period >= 0:  # an every-pass event is simply tried on the next pass
                e.timeout_at = self.clock() + self.retry_delay
                e.seq = self._next_seq()
                _heappush(self._heap, (e.timeout_at, e.seq, e))
            return
        seq = e.seq
        try:
            if e.cancelled:
                return
            try:
                deliver(e.continuation, callback_event, e)  # type: ignore[arg-type]
            except Exception:
                log.exception("%s: handler of %r raised", self.name, e)
            if e.period > 0 and not e.cancelled and e.seq == seq:
                e.timeout_at = max(self.clock(), e.timeout_at) + e.period
                e.seq = self._next_seq()
                _heappush(self._heap, (e.timeout_at, e.seq, e))
        finally:
            if m is not None:
                m.unlock()

    def run_pass(self, max_wait_ms: Any = MAX_IDLE_WAIT_MS) -> None:
        """One pass of the loop (see the module docstring), its poll step waiting at most
        ``max_wait_ms`` (an int, 0..MAX_WAIT_MS: ``TypeError``/``ValueError`` otherwise)."""
        if type(max_wait_ms) is not int or not 0 <= max_wait_ms <= MAX_WAIT_MS:
            max_wait_ms = check_wait_ms("run_pass", "max_wait_ms", max_wait_ms)
        self._run_pass(max_wait_ms)

    def _run_pass(self, max_wait_ms: int) -> None:
        # run_pass without its check: the loop's own call.
        if self._ext:
            with self._ext_lock:
                batch, self._ext = self._ext, []
            enqueue = self._enqueue_local
            for seq, e in batch:
                if e.seq == seq:
                    try:
                        enqueue(e)
                    except Exception:
                        # An event whose fields were changed to bad values after it was
                        # scheduled: dropped alone, not with the rest of the batch.
                        log.exception("%s: dropped an unschedulable event %r", self.name, e)
        ready = self._ready
        heap = self._heap
        if heap:
            now = self.clock()
            while heap and heap[0][0] <= now:
                _, seq, e = _heappop(heap)
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

    def next_timer_ms(self, cap_ms: Any) -> int:
        """Milliseconds until the next timer, capped at ``cap_ms`` (an int,
        0..MAX_WAIT_MS); 0 when work is queued."""
        if type(cap_ms) is not int or not 0 <= cap_ms <= MAX_WAIT_MS:
            cap_ms = check_wait_ms("next_timer_ms", "cap_ms", cap_ms)
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
        init: Any = None,
        oneevent: Any = None,
    ) -> None:
        """Start the OS thread; ``init(thread)`` runs on it first. Returns once it ran.

        ``oneevent`` is the Event a DEDICATED thread runs (none for a REGULAR one).
        ``TypeError`` if ``init`` is not callable or ``oneevent`` is not an Event.
        """
        if init is not None and not callable(init):
            raise TypeError(f"start: init must be callable or None, not {type(init).__name__}")
        if oneevent is not None:
            if not isinstance(oneevent, Event):
                raise TypeError(
                    f"start: oneevent must be an Event or None, not {type(oneevent).__name__}"
                )
            if self.tt != DEDICATED:
                raise ValueError("start: oneevent is for a DEDICATED thread only")
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
        set_this_ethread(self)
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
            run_pass = self._run_pass
            while not self._stop:
                try:
                    run_pass(MAX_IDLE_WAIT_MS)
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

    def join(self, timeout: Any = None) -> bool:
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

    def get_slot(self, offset: Any) -> Any:
        """The per-thread object allocated at ``offset`` by ``EventProcessor.allocate``.

        ``TypeError`` unless ``offset`` is an int, ``ValueError`` unless it is one of the
        thread's slots (0 <= offset < number of slots)."""
        slots = self.slots
        if type(offset) is not int or not 0 <= offset < len(slots):
            _check_int("get_slot", "offset", offset)
            if not slots:
                raise ValueError(f"get_slot: {self.name} has no slots (offset {offset})")
            if not 0 <= offset < len(slots):
                raise ValueError(
                    f"get_slot: offset must be between 0 and {len(slots) - 1}, got {offset}"
                )
        return slots[offset]

    def __repr__(self) -> str:
        return f"<EThread {self.name} {self.tt}>"
