"""The loop's compiled call_soon / get_debug / create_task (ats_cffi/asyncio/loopcore.py):
asyncio's behaviour in every case, its own method where the fast path does not apply."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any

import pytest

import ats_cffi.asyncio as ats_asyncio
from ats_cffi.asyncio import Loop
from ats_cffi.net.stats import NET_HANDLER_RUN

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_the_loop_binds_the_compiled_methods() -> None:
    loop = ats_asyncio.new_event_loop()
    try:
        for name in ("get_debug", "call_soon"):
            assert name in vars(loop), name
        assert ("create_task" in vars(loop)) == (sys.version_info >= (3, 11))
    finally:
        loop.close()


def test_call_soon_runs_in_order_with_args_and_context_and_cancels() -> None:
    loop = ats_asyncio.new_event_loop()
    got: list[Any] = []
    try:
        ctx = contextvars.copy_context()
        ctx.run(VAR.set, "given")
        h1 = loop.call_soon(got.append, 1)
        h2 = loop.call_soon(lambda: got.append(VAR.get()), context=ctx)
        h3 = loop.call_soon(got.append, 3)
        h4 = loop.call_soon(got.append, 4)
        h4.cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert got == [1, "given", 3]
        assert all(isinstance(h, asyncio.Handle) for h in (h1, h2, h3, h4))
        assert h4.cancelled() and not h1.cancelled()
    finally:
        loop.close()


def test_call_soon_on_a_closed_loop_raises_as_asyncio() -> None:
    loop = ats_asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon(print)
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.create_task(coro)
    coro.close()


def test_get_debug_follows_set_debug_and_debug_mode_checks_the_callback() -> None:
    loop = ats_asyncio.new_event_loop()
    try:
        loop.set_debug(True)
        assert loop.get_debug() is True
        with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
            loop.call_soon(asyncio.sleep)  # asyncio's debug check, through its own method
        h = loop.call_soon(print)
        assert h._source_traceback  # made in debug mode
        loop.set_debug(False)
        assert loop.get_debug() is False
        assert loop.call_soon(print)._source_traceback is None
    finally:
        loop.close()


def test_a_debug_flag_set_by_hand_is_seen_from_the_next_pass_on() -> None:
    # The compiled methods keep _debug as a field, taken again by set_debug and, for a
    # write that bypasses it, by the next pass.
    loop = ats_asyncio.new_event_loop()
    seen: list[Any] = []
    try:

        def flip() -> None:
            loop._debug = True
            seen.append(loop.get_debug())  # this pass: still the field's value
            loop.call_soon(after)

        def after() -> None:
            seen.append(loop.get_debug())
            seen.append(loop.call_soon(print)._source_traceback is not None)
            loop._debug = False
            loop.stop()

        loop.call_soon(flip)
        loop.run_forever()
        assert seen == [False, True, True]
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert loop.get_debug() is False
    finally:
        loop.close()


def test_create_task_names_and_a_task_factory_is_used() -> None:
    made: list[Any] = []

    def factory(loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    async def answer() -> int:
        return 42

    async def main() -> tuple[int, str, int]:
        loop = asyncio.get_running_loop()
        plain = loop.create_task(answer(), name="plain")
        first = await plain
        loop.set_task_factory(factory)
        second = await loop.create_task(answer(), name="made")
        loop.set_task_factory(None)
        third = await loop.create_task(answer())  # not the factory's
        return first + second + third, plain.get_name(), len(made)

    assert ats_asyncio.run(main()) == (126, "plain", 1)
    assert made[0].get_name() == "made"


def test_a_subclass_keeps_its_own_call_soon() -> None:
    calls: list[Any] = []

    class Counting(Loop):
        def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
            calls.append(callback)
            return super().call_soon(callback, *args, context=context)

    loop = Counting()
    try:
        assert "call_soon" not in vars(loop) and "get_debug" in vars(loop)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert calls and calls[0] == loop.stop
    finally:
        loop.close()


def test_a_call_soon_handle_has_every_field_that_asyncio_gives_one() -> None:
    loop = ats_asyncio.new_event_loop()
    try:
        ctx = contextvars.copy_context()
        fast = loop.call_soon(print, 1, 2, context=ctx)
        made = asyncio.Handle(print, (1, 2), loop, ctx)
        for name in asyncio.Handle.__slots__:
            if name != "__weakref__":
                assert getattr(fast, name) == getattr(made, name), name
        assert type(fast) is asyncio.Handle and repr(fast) == repr(made)
        own = loop.call_soon(print)  # no context given: a copy of the current one
        assert isinstance(own._context, contextvars.Context)
        assert own._context is not ctx
        fast.cancel()
        assert fast.cancelled() and fast._callback is None and fast._args is None
    finally:
        loop.close()


def test_call_at_and_call_later_run_due_timers_in_deadline_order() -> None:
    loop = ats_asyncio.new_event_loop()
    got: list[Any] = []
    try:
        assert "call_at" in vars(loop) and "call_later" in vars(loop)
        now = loop.time()
        late = loop.call_at(now - 1.0, got.append, "late")
        loop.call_at(now - 2.0, got.append, "early")
        dropped = loop.call_at(now - 3.0, got.append, "cancelled")
        dropped.cancel()
        soon = loop.call_later(0, got.append, "now")
        never = loop.call_later(3600, got.append, "never")
        assert isinstance(late, asyncio.TimerHandle) and late.when() == now - 1.0
        assert soon.when() >= now and never.when() >= now + 3599
        loop.call_later(0, loop.stop)
        loop.run_forever()
        assert got == ["early", "late", "now"]
        never.cancel()
    finally:
        loop.close()


def test_a_timer_has_every_field_that_asyncio_gives_one() -> None:
    loop = ats_asyncio.new_event_loop()
    try:
        ctx = contextvars.copy_context()
        fast = loop.call_at(5.0, print, "x", context=ctx)
        made = asyncio.TimerHandle(5.0, print, ("x",), loop, ctx)
        for name in (*asyncio.Handle.__slots__, *asyncio.TimerHandle.__slots__):
            if name not in ("__weakref__", "_scheduled"):
                assert getattr(fast, name) == getattr(made, name), name
        assert fast._scheduled and fast in loop._scheduled and fast == made
        fast.cancel()
        assert fast.cancelled() and loop._timer_cancelled_count == 1
    finally:
        loop.close()


def test_bad_timer_arguments_and_a_closed_loop_raise_as_asyncio() -> None:
    loop = ats_asyncio.new_event_loop()
    try:
        with pytest.raises(TypeError):
            loop.call_later(None, print)
        with pytest.raises(TypeError):
            loop.call_at(None, print)
        with pytest.raises(TypeError):
            loop.call_later("1", print)
    finally:
        loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_later(1, print)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_at(1.0, print)


def test_a_subclass_with_its_own_call_at_or_time_keeps_asyncio_call_later() -> None:
    class OwnCallAt(Loop):
        def call_at(self, when: Any, callback: Any, *args: Any, context: Any = None) -> Any:
            return super().call_at(when, callback, *args, context=context)

    class OwnTime(Loop):
        def time(self) -> float:
            return 1000.0

    for cls in (OwnCallAt, OwnTime):
        loop = cls()
        try:
            assert "call_later" not in vars(loop), cls
            assert ("call_at" in vars(loop)) == (cls is OwnTime)
            if cls is OwnTime:
                assert loop.call_later(1.0, print).when() == 1001.0
        finally:
            loop.close()


def test_a_pass_drops_cancelled_timers_as_asyncio() -> None:
    loop = ats_asyncio.new_event_loop()
    try:
        assert "_run_once" in vars(loop)
        far = [loop.call_later(3600 + i, print) for i in range(150)]
        for h in far[:100]:  # over half of 100+: the heap is rebuilt without them
            h.cancel()
        assert loop._timer_cancelled_count == 100
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert loop._timer_cancelled_count == 0 and len(loop._scheduled) == 50
        assert all(not h._scheduled for h in far[:100]) and all(h._scheduled for h in far[100:])
        for h in far[100:103]:  # a few, at the head: popped one by one
            h.cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert loop._timer_cancelled_count == 0 and len(loop._scheduled) == 47
        for h in far[103:]:
            h.cancel()
    finally:
        loop.close()


def test_what_a_callback_makes_ready_runs_on_the_next_pass() -> None:
    loop = ats_asyncio.new_event_loop()
    passes: list[int] = []
    try:
        # The NetHandler counts its passes: one per select of the loop's pass.
        stats = loop._net_stats
        start = stats[NET_HANDLER_RUN]

        def first() -> None:
            passes.append(stats[NET_HANDLER_RUN] - start)
            loop.call_soon(second)

        def second() -> None:
            passes.append(stats[NET_HANDLER_RUN] - start)
            loop.stop()

        loop.call_soon(first)
        loop.run_forever()
        assert passes == [1, 2]
    finally:
        loop.close()


def test_debug_mode_runs_asyncio_own_pass_and_reports_a_slow_callback(caplog) -> None:
    loop = ats_asyncio.new_event_loop()
    try:
        loop.set_debug(True)
        loop.slow_callback_duration = 0.0
        loop.call_soon(loop.stop)
        with caplog.at_level("WARNING", logger="asyncio"):
            loop.run_forever()
        assert "Executing <Handle" in caplog.text
    finally:
        loop.close()


def _run_failing_callbacks(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """A call_soon and a call_later callback that raise, a cancelled timer, and one that
    works after them: what the loop's exception handler heard."""
    heard: list[dict[str, Any]] = []
    got: list[Any] = []
    loop.set_exception_handler(lambda _loop, context: heard.append(context))

    def boom(arg: Any) -> None:
        raise ValueError(arg)

    loop.call_soon(boom, "soon")
    loop.call_later(0, boom, "later")
    loop.call_later(0, got.append, "dropped").cancel()
    loop.call_later(0, got.append, "ran")
    loop.call_later(0, loop.stop)
    loop.run_forever()
    assert got == ["ran"]
    return heard


def test_a_raising_callback_reaches_the_exception_handler_as_on_asyncio() -> None:
    loops = [ats_asyncio.new_event_loop(), asyncio.SelectorEventLoop()]
    try:
        fast, ref = (_run_failing_callbacks(lp) for lp in loops)
        assert [sorted(c) for c in fast] == [sorted(c) for c in ref]
        assert [c["message"] for c in fast] == [c["message"] for c in ref]
        assert [repr(c["exception"]) for c in fast] == ["ValueError('soon')", "ValueError('later')"]
        assert [type(c["handle"]) for c in fast] == [asyncio.Handle, asyncio.TimerHandle]
        assert fast[0]["message"].startswith("Exception in callback ")
    finally:
        for lp in loops:
            lp.close()


def test_a_handle_subclass_is_run_by_its_own_run() -> None:
    loop = ats_asyncio.new_event_loop()
    ran: list[str] = []

    class Own(asyncio.Handle):
        __slots__ = ()

        def _run(self) -> None:
            ran.append("own")
            super()._run()

    try:
        loop._ready.append(Own(ran.append, ("callback",), loop, None))
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert ran == ["own", "callback"]
    finally:
        loop.close()
