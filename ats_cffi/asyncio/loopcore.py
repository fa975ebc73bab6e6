"""The asyncio loop's most called methods, compiled (``_compiled.py``).

asyncio's ``BaseEventLoop`` is Python: every ``call_soon`` (each step of each Task, each
done Future's callbacks), every ``get_debug`` (asked by each new Future and Task and
Handle), every ``call_later`` (a timeout) and every ``create_task`` runs two to six
interpreted frames. A uvicorn request makes about 25 such calls, where uvloop runs them
in C (cProfile of perf/uvicorn_hello.py under wrk).

``LoopCore`` holds the same code for the common case, compiled; ``Loop.__init__``
(loop.py) binds its methods as the loop's own instance attributes, so that
``loop.call_soon(...)`` finds them first and no interpreted frame runs. A subclass that
overrides one of them (or what it uses: ``call_later`` reads ``time`` and schedules
as ``call_at``) keeps its own. Anything else — a closed loop, debug mode, a task
factory — goes to asyncio's own method, unchanged: the fast path is asyncio's behaviour
for a running, non-debug loop, not a new one.
"""

from __future__ import annotations

import contextvars
import heapq
import inspect
import math
import time
from asyncio import base_events, events, format_helpers, tasks
from typing import Any, Final

from ats_cffi import _fastio
from ats_cffi.asyncio.dispatch import TransportDispatch
from ats_cffi.eventsystem.ethread import MAX_WAIT_MS, EThread

_Handle: Final = events.Handle
_TimerHandle: Final = events.TimerHandle
_Task: Final = tasks.Task
_Base: Final = base_events.BaseEventLoop
_call_soon: Final = _Base.call_soon
_call_later: Final = _Base.call_later
_call_at: Final = _Base.call_at
_create_task: Final = _Base.create_task
_run_once: Final = _Base._run_once  # type: ignore[attr-defined]
_monotonic: Final = time.monotonic
# asyncio's private constants of _run_once (not in typeshed)
_MIN_SCHEDULED: Final[int] = base_events._MIN_SCHEDULED_TIMER_HANDLES  # type: ignore[attr-defined]
_MIN_CANCELLED_FRACTION: Final[float] = base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION  # type: ignore[attr-defined]
_MAX_SELECT_TIMEOUT: Final[float] = base_events.MAXIMUM_SELECT_TIMEOUT  # type: ignore[attr-defined]
_copy_context: Final = contextvars.copy_context

#: The fields ``Handle.__init__`` sets (CPython 3.10 to 3.13): ``call_soon`` makes its
#: Handle with them set as ``__init__`` sets them outside debug mode, without its
#: interpreted frame. Another Python's Handle, with other fields, is made by its own
#: ``__init__``.
_HANDLE_SLOTS: Final = (
    "_callback", "_args", "_cancelled", "_loop", "_source_traceback", "_repr", "__weakref__",
    "_context",
)  # fmt: skip
_SET_HANDLE_FIELDS: Final[bool] = tuple(
    getattr(_Handle, "__slots__", ())
) == _HANDLE_SLOTS and tuple(getattr(_TimerHandle, "__slots__", ())) == ("_scheduled", "_when")
#: The order of the values given to the makers below.
_MADE_FIELDS: Final = (
    "_context", "_loop", "_callback", "_args", "_cancelled", "_repr", "_source_traceback",
)  # fmt: skip
#: ``maker(context, loop, callback, args, False, None, None)``: a new Handle, those fields
#: set in one native call (``_fastio.slot_maker``), where setting them by name from
#: compiled code cost ~120 instructions each; the timer's maker takes ``when`` and
#: ``True`` (scheduled) too. None when the fields are not these.
_make_handle: Final[Any] = _fastio.slot_maker(_Handle, _MADE_FIELDS) if _SET_HANDLE_FIELDS else None
_make_timer: Final[Any] = (
    _fastio.slot_maker(_TimerHandle, _MADE_FIELDS + ("_when", "_scheduled"))
    if _SET_HANDLE_FIELDS
    else None
)
#: ``run(handle)``: asyncio's ``Handle._run`` of a Handle or TimerHandle (not of a subclass,
#: which may have its own), natively: nothing if cancelled, else the callback in the
#: handle's context; what it raises goes to ``_callback_failed``.
_run_handle: Final[Any] = (
    _fastio.slot_runner(_Handle, ("_cancelled", "_context", "_callback", "_args"))
    if _SET_HANDLE_FIELDS
    else None
)
#: heapq's heappush, heappop and heapify of the timers, natively: a TimerHandle ordered
#: by its ``_when`` (as its ``__lt__`` orders it), without the interpreted ``__lt__``.
_heappush: Final[Any] = (
    _fastio.slot_heap_push(_TimerHandle, ("_when",)) if _SET_HANDLE_FIELDS else heapq.heappush
)
_heappop: Final[Any] = (
    _fastio.slot_heap_pop(_TimerHandle, ("_when",)) if _SET_HANDLE_FIELDS else heapq.heappop
)
_heapify: Final[Any] = (
    _fastio.slot_heapify(_TimerHandle, ("_when",)) if _SET_HANDLE_FIELDS else heapq.heapify
)
_format_callback_source: Final[Any] = format_helpers._format_callback_source
#: Whether it takes ``debug`` (3.12+: Handle._run passes the loop's).
_FORMAT_TAKES_DEBUG: Final[bool] = "debug" in inspect.signature(_format_callback_source).parameters


def wait_ms(timeout: float | None) -> int:
    """asyncio's ``select`` timeout (seconds, None: no limit) as ``run_pass``'s wait."""
    if timeout is None:
        return MAX_WAIT_MS
    if timeout <= 0:
        return 0
    ms = timeout * 1000.0
    return MAX_WAIT_MS if ms >= MAX_WAIT_MS else math.ceil(ms)


def net_pass(
    thread: EThread, dispatch: TransportDispatch, ready: list[Any], timeout: float | None
) -> list[Any] | None:
    """``NetSelector.select`` (selector.py): one pass of the loop's EThread, the transports'
    writes held until it ends; then what the pass found ready among the registered fds
    (taken out of ``ready``, the selector's list, which stays the same object), or None."""
    if thread.evfd is None:  # closed: nothing can be waited on
        return None
    dispatch.hold_writes()  # the transports' writes of the pass go out together
    try:
        thread.run_pass(wait_ms(timeout))
    finally:
        dispatch.release_writes()
    if not ready:
        return None
    events = ready.copy()
    ready.clear()
    return events


def _callback_failed(loop: Any, handle: Any, exc: BaseException) -> None:
    """What asyncio's ``Handle._run`` does when the callback raised: the loop's exception
    handler hears of it, with the same message and context."""
    if _FORMAT_TAKES_DEBUG:
        cb = _format_callback_source(handle._callback, handle._args, debug=loop.get_debug())
    else:
        cb = _format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    loop.call_exception_handler(context)


class LoopCore:
    """``get_debug``, ``call_soon``, ``call_later``, ``call_at``, ``create_task``,
    ``_timer_handle_cancelled`` and ``_run_once`` of ``loop`` (an asyncio
    ``BaseEventLoop`` whose ``time`` is asyncio's), compiled; see the module doc."""

    __slots__ = (
        "loop", "attrs", "ready", "dispatch", "thread", "selected", "debug", "closed",
        "factory", "fast", "plain_tasks",
    )  # fmt: skip

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        #: The loop's ``TransportDispatch`` (dispatch.py), which holds the transports'
        #: writes of the callbacks of a pass until they all ran, as those of its reads.
        self.dispatch: TransportDispatch | None = getattr(loop, "_vc_dispatch", None)
        #: The loop's instance dict, where asyncio keeps ``_debug``, ``_closed`` and
        #: ``_task_factory``: read here by key (compiled, a dict lookup; ``loop._debug``
        #: would be a lookup by name through the loop's classes first).
        self.attrs: dict[str, Any] = loop.__dict__
        #: asyncio's ready queue: made once in ``BaseEventLoop.__init__``, never replaced.
        self.ready: Any = loop._ready
        #: The loop's EThread and its NetSelector's ready list when the selector is a
        #: NetSelector (``select`` is then ``net_pass``, called here without its
        #: interpreted frame); else None, and the selector's ``select`` is called.
        self.thread: EThread | None = None
        self.selected: list[Any] = []
        net_select = getattr(loop._selector, "net_select", None)
        if net_select is not None and self.dispatch is not None:
            self.thread, self.selected = net_select()
        self.debug: Any = None
        self.closed: Any = None
        self.factory: Any = None
        #: Open and not in debug mode: the fast paths apply (``plain_tasks``: with no task
        #: factory either).
        self.fast = False
        self.plain_tasks = False
        self.sync()

    def sync(self) -> None:
        """Take the loop's ``_debug``, ``_closed`` and ``_task_factory`` again: the loop
        calls this after ``set_debug``, ``set_task_factory`` and ``close``, and each pass
        checks that nothing else changed them (loop.py). Read as fields, each call here
        saves the lookups by key (~130 instructions each, ~1,800 a uvicorn request)."""
        attrs = self.attrs
        self.debug = attrs["_debug"]
        self.closed = attrs["_closed"]
        self.factory = attrs["_task_factory"]
        self.fast = not self.closed and not self.debug
        self.plain_tasks = self.fast and self.factory is None

    def get_debug(self) -> Any:
        return self.debug

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
        loop = self.loop
        if not self.fast:
            # asyncio's: it raises for a closed loop, checks the thread and the callback
            # in debug mode, and trims the handle's source traceback
            return _call_soon(loop, callback, *args, context=context)
        handle: Any
        if _make_handle is None:
            handle = _Handle(callback, args, loop, context)
        else:
            if context is None:
                context = _copy_context()
            handle = _make_handle(context, loop, callback, args, False, None, None)
        self.ready.append(handle)
        return handle

    def call_later(self, delay: Any, callback: Any, *args: Any, context: Any = None) -> Any:
        if delay is None or not self.fast:
            return _call_later(self.loop, delay, callback, *args, context=context)
        return self._timer(_monotonic() + delay, callback, args, context)

    def call_at(self, when: Any, callback: Any, *args: Any, context: Any = None) -> Any:
        if when is None or not self.fast:
            return _call_at(self.loop, when, callback, *args, context=context)
        return self._timer(when, callback, args, context)

    def _timer(self, when: Any, callback: Any, args: Any, context: Any) -> Any:
        # asyncio's call_at outside debug mode: a TimerHandle, scheduled.
        loop = self.loop
        timer: Any
        if _make_timer is None:
            timer = _TimerHandle(when, callback, args, loop, context)
            _heappush(self.attrs["_scheduled"], timer)  # replaced when cancelled ones are purged
            timer._scheduled = True
            return timer
        if context is None:
            context = _copy_context()
        # Made scheduled: it is in the heap before any code could see it.
        timer = _make_timer(context, loop, callback, args, False, None, None, when, True)
        _heappush(self.attrs["_scheduled"], timer)
        return timer

    def timer_handle_cancelled(self, handle: Any) -> None:
        """asyncio's ``_timer_handle_cancelled``: a scheduled timer was cancelled (each
        cancelled ``call_later`` calls it, from ``TimerHandle.cancel``)."""
        if handle._scheduled:
            self.attrs["_timer_cancelled_count"] += 1

    def create_task(self, coro: Any, *, name: Any = None, context: Any = None) -> Any:
        loop = self.loop
        if not self.plain_tasks:
            return _create_task(loop, coro, name=name, context=context)
        return _Task(coro, loop=loop, name=name, context=context)

    def run_once(self) -> None:
        """asyncio's ``_run_once`` (one pass: drop cancelled timers, select, move the due
        timers to the ready queue, run what was ready), outside debug mode, where it times
        each callback: then asyncio's own."""
        attrs = self.attrs
        loop = self.loop
        debug = attrs["_debug"]
        if (
            debug is not self.debug
            or attrs["_closed"] is not self.closed
            or attrs["_task_factory"] is not self.factory
        ):
            self.sync()  # set by something else than the loop's methods
        if debug:
            _run_once(loop)
            return
        self._drop_cancelled_timers()
        ready = self.ready
        scheduled = attrs["_scheduled"]
        timeout: Any = None
        if ready or attrs["_stopping"]:
            timeout = 0
        elif scheduled:
            wait = scheduled[0]._when - _monotonic()
            timeout = min(wait if wait > 0 else 0, _MAX_SELECT_TIMEOUT)
        thread = self.thread
        dispatch = self.dispatch
        if thread is not None and dispatch is not None:
            event_list = net_pass(thread, dispatch, self.selected, timeout)
        else:
            event_list = attrs["_selector"].select(timeout)
        if event_list:
            loop._process_events(event_list)
        event_list = None
        end_time = _monotonic() + attrs["_clock_resolution"]
        while scheduled:
            handle = scheduled[0]
            if handle._when >= end_time:
                break
            handle = _heappop(scheduled)
            handle._scheduled = False
            ready.append(handle)
        # What is ready now, not what these callbacks make ready: that runs next pass.
        if dispatch is not None:
            dispatch.hold_writes()
        try:
            for _ in range(len(ready)):
                handle = ready.popleft()
                t = type(handle)
                if _run_handle is not None and (t is _Handle or t is _TimerHandle):
                    try:
                        _run_handle(handle)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        _callback_failed(loop, handle, exc)
                elif not handle._cancelled:
                    handle._run()
        finally:
            if dispatch is not None:
                dispatch.release_writes()
        handle = None

    def _drop_cancelled_timers(self) -> None:
        # asyncio's: rebuild the heap when over half of 100+ timers are cancelled, else
        # pop the cancelled ones at its head.
        attrs = self.attrs
        scheduled = attrs["_scheduled"]
        n: int = len(scheduled)
        if n > _MIN_SCHEDULED and attrs["_timer_cancelled_count"] / n > _MIN_CANCELLED_FRACTION:
            kept = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    kept.append(handle)
            _heapify(kept)
            attrs["_scheduled"] = kept
            attrs["_timer_cancelled_count"] = 0
            return
        while scheduled and scheduled[0]._cancelled:
            attrs["_timer_cancelled_count"] -= 1
            handle = _heappop(scheduled)
            handle._scheduled = False
