"""Action and Event: a handle on scheduled or pending work that can be cancelled."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from ats_cffi.eventsystem.codes import EVENT_NONE
from ats_cffi.eventsystem.continuation import Continuation, check_continuation
from ats_cffi.eventsystem.current import REGULAR, this_ethread
from ats_cffi.eventsystem.mutex import ProxyMutex

if TYPE_CHECKING:
    from ats_cffi.eventsystem.ethread import EThread


def check_number(call: str, name: str, value: Any) -> float:
    """``value`` (a time or period) as a float: ``TypeError`` unless it is a number (not a
    bool), ``ValueError`` if it is NaN (it would break the timer heap's ordering). An int
    too large for a float is +-inf: a deadline that never comes."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{call}: {name} must be a number, not {type(value).__name__}")
    try:
        f = float(value)
    except OverflowError:
        f = math.inf if value > 0 else -math.inf
    if f != f:
        raise ValueError(f"{call}: {name} must not be NaN")
    return f


def check_time(call: str, name: str, value: Any) -> float:
    """``value`` (a delay, or a clock time to run at) as a float: ``check_number``, and
    ``ValueError`` if it is negative."""
    f = check_number(call, name, value)
    if f < 0:
        raise ValueError(f"{call}: {name} must be >= 0, got {f}")
    return f


def check_period(call: str, value: Any) -> float:
    """``value`` (a period: < 0 for every loop pass) as a float: ``check_number``, and
    ``ValueError`` if it is 0."""
    f = check_number(call, "period", value)
    if f == 0:
        raise ValueError(f"{call}: period must not be 0")
    return f


def check_callback_event(call: str, value: Any, name: str = "callback_event") -> int:
    """``value`` (an event code) unless it is not an int (a bool is not): ``TypeError``.

    The schedulers call it only when ``type(value) is not int`` (an ``EventCode`` member
    passes here), so the common case costs one type test."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{call}: {name} must be an int, not {type(value).__name__}")
    return value


@mypyc_attr(allow_interpreted_subclasses=True)
class Action:
    """What ``connect_re``, ``main_accept`` and the schedulers return.

    ``cancel()`` marks the action cancelled under the continuation's mutex (re-entrant),
    which every delivery holds: once it returns, no callback into ``continuation`` starts.
    Called with that mutex held (as ATS requires) or from a plain thread, it also means
    none is running. On an event thread whose continuation's mutex another thread holds,
    it does not wait (two event threads cancelling each other's events would deadlock): a
    delivery already running there finishes. Callable from any thread; a second call does
    nothing.
    """

    __slots__ = ("continuation", "mutex", "cancelled", "__weakref__")

    def __init__(self, cont: Any = None) -> None:
        """``TypeError`` unless ``cont`` is a Continuation (given a mutex if it has none)
        or None."""
        self.continuation: Continuation | None = None
        self.mutex: ProxyMutex | None = None
        if cont is not None:
            c = check_continuation(type(self).__name__, cont)
            self.continuation = c
            self.mutex = c.mutex
        self.cancelled: bool = False

    def cancel(self) -> None:
        m = self.mutex
        if m is None:
            self.cancelled = True
            return
        if not m.try_lock():
            thread = this_ethread()
            if thread is not None and thread.tt == REGULAR:
                # An event thread never waits for another thread's lock (class doc). The
                # hook runs from an event, which the thread delivers with the mutex held.
                self.cancelled = True
                if type(self)._cancelled_locked is not Action._cancelled_locked:
                    thread.schedule_imm(Continuation(m, lambda event, e: self._cancelled_locked()))
                return
            m.lock()
        try:
            self.cancelled = True
            self._cancelled_locked()
        finally:
            m.unlock()

    def _cancelled_locked(self) -> None:
        """Hook for subclasses: runs under the mutex right after the action is cancelled."""


class Event(Action):
    """One scheduled delivery of ``callback_event`` to ``continuation`` on ``ethread``.

    ``timeout_at`` is the clock time it is due (0 for immediate), ``period`` is > 0 for
    a periodic event, < 0 for one that runs on every loop pass (ATS's NET_PERIOD), 0 for
    a one-shot. ``cookie`` travels with the event for the handler's use.
    """

    __slots__ = ("ethread", "callback_event", "cookie", "timeout_at", "period", "seq")

    def __init__(
        self,
        cont: Any,
        callback_event: Any = EVENT_NONE,
        cookie: Any = None,
        timeout_at: Any = 0.0,
        period: Any = 0.0,
    ) -> None:
        """``TypeError`` unless ``cont`` is a Continuation (it gets a mutex if it has
        none), ``callback_event`` an int and ``timeout_at``/``period`` numbers;
        ``ValueError`` for a NaN time."""
        # Action.__init__ without its class-name lookup: an Event is made per schedule.
        c = check_continuation("Event", cont)
        self.continuation = c
        self.mutex = c.mutex
        self.cancelled = False
        if type(callback_event) is not int:
            check_callback_event("Event", callback_event)
        if type(timeout_at) is not float or timeout_at != timeout_at:
            timeout_at = check_number("Event", "timeout_at", timeout_at)
        if type(period) is not float or period != period:
            period = check_number("Event", "period", period)
        self.ethread: EThread | None = None
        # Typed Any, not int/float: a field given a bad value after construction is
        # refused by ``EThread.schedule`` with a message naming it (compiled, a typed field
        # would refuse the assignment itself, naming nothing).
        self.callback_event: Any = callback_event
        self.cookie: Any = cookie
        self.timeout_at: Any = timeout_at
        self.period: Any = period
        # Bumped by every (re)schedule: a queue entry whose recorded seq differs is stale
        # (the heap and the every-pass list remove lazily).
        self.seq: int = 0

    def schedule_imm(self, callback_event: Any = None) -> None:
        """Re-schedule this event to run now on its thread (from within its handler)."""
        self._reschedule("schedule_imm", 0.0, 0.0, callback_event)

    def schedule_in(self, delay: Any, callback_event: Any = None) -> None:
        """Re-schedule this event ``delay`` seconds from now."""
        delay = check_time("schedule_in", "delay", delay)
        t = self._thread("schedule_in")
        self._reschedule("schedule_in", t.clock() + delay, 0.0, callback_event)

    def schedule_at(self, atime: Any, callback_event: Any = None) -> None:
        """Re-schedule this event for when its thread's clock reaches ``atime``."""
        atime = check_time("schedule_at", "atime", atime)
        self._reschedule("schedule_at", atime, 0.0, callback_event)

    def schedule_every(self, period: Any, callback_event: Any = None) -> None:
        """Make this event periodic (``period`` < 0: every loop pass)."""
        period = check_period("schedule_every", period)
        t = self._thread("schedule_every")
        at = t.clock() + period if period > 0 else 0.0
        self._reschedule("schedule_every", at, period, callback_event)

    def _thread(self, call: str) -> EThread:
        if self.ethread is None:
            raise RuntimeError(f"Event.{call}: the event was never scheduled on a thread")
        return self.ethread

    def _reschedule(self, call: str, at: float, period: float, callback_event: Any) -> None:
        if callback_event is not None and type(callback_event) is not int:
            check_callback_event(f"Event.{call}", callback_event)
        t = self._thread(call)
        if callback_event is not None:
            self.callback_event = callback_event
        self.timeout_at = at
        self.period = period
        self.cancelled = False
        t._schedule(self, False)

    def __repr__(self) -> str:
        cont = type(self.continuation).__name__
        at = self.timeout_at
        at_s = f"{at:.6f}" if isinstance(at, (int, float)) else repr(at)
        return (
            f"<Event {cont} event={self.callback_event!r} at={at_s} "
            f"period={self.period!r} cancelled={self.cancelled}>"
        )


def new_event(
    call: str,
    cont: Continuation,
    callback_event: Any,
    cookie: Any,
    timeout_at: float = 0.0,
    period: float = 0.0,
) -> Event:
    """An Event for the scheduler ``call``, whose ``cont`` and times are already checked:
    ``TypeError`` naming ``call`` unless ``callback_event`` is an int."""
    if type(callback_event) is not int:
        check_callback_event(call, callback_event)
    return Event(cont, callback_event, cookie, timeout_at, period)
