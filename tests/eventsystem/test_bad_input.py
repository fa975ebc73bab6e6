"""Bad input to the event system is refused at the call, naming the call and the argument
(DESIGN.md section 10), never later on an event thread."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from ats_cffi.eventsystem import (
    DEDICATED,
    ET_CALL,
    VIO,
    Action,
    Continuation,
    EThread,
    Event,
    EventCode,
    EventProcessor,
    IOBufferBlock,
    MIOBuffer,
    ProxyMutex,
    VIOOp,
)
from ats_cffi.eventsystem.iobuffer import MAX_BLOCK_SIZE
from ats_cffi.eventsystem.processor import MAX_EVENT_THREADS, MAX_THREADS_IN_EACH_TYPE

from .conftest import WAIT, Recorder


def noop(event: int, data: Any) -> None:
    return None


# ------------------------------------------------------------ 1, 2: EThread.schedule(e)


def test_event_refuses_nan_and_non_number_times() -> None:
    c = Continuation(handler=noop)
    with pytest.raises(ValueError, match="Event: timeout_at must not be NaN"):
        Event(c, timeout_at=math.nan)
    with pytest.raises(TypeError, match="Event: timeout_at must be a number, not str"):
        Event(c, timeout_at="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Event: period must be a number, not NoneType"):
        Event(c, period=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field, value, error, message",
    [
        ("timeout_at", math.nan, ValueError, "schedule: e.timeout_at must not be NaN"),
        ("timeout_at", "x", TypeError, "schedule: e.timeout_at must be a number, not str"),
        ("timeout_at", None, TypeError, "schedule: e.timeout_at must be a number"),
        ("period", math.nan, ValueError, "schedule: e.period must not be NaN"),
        ("callback_event", "x", TypeError, "schedule: e.callback_event must be an int"),
        ("continuation", None, TypeError, "schedule: e.continuation must be a Continuation"),
    ],
)
def test_schedule_refuses_an_event_with_bad_fields(
    loose_thread, field: str, value: Any, error: type, message: str
) -> None:
    e = Event(Continuation(handler=noop))
    setattr(e, field, value)
    with pytest.raises(error, match=message):
        loose_thread.schedule(e)
    assert not loose_thread._ext


@pytest.mark.parametrize("value", ["x", None, 5, Continuation(handler=noop)])
def test_schedule_refuses_what_is_not_an_event(loose_thread, value: Any) -> None:
    with pytest.raises(TypeError, match="schedule: e must be an Event, not"):
        loose_thread.schedule(value)


def test_schedule_gives_an_event_without_mutex_the_continuations(loose_thread) -> None:
    rec = Recorder()
    e = Event(rec)
    e.mutex = None  # as an event made before its continuation had a mutex
    loose_thread.schedule(e)
    assert isinstance(e.mutex, ProxyMutex) and e.mutex is rec.mutex


def test_nan_deadline_does_not_starve_later_timers(processor) -> None:
    ep = processor()
    t = ep.threads()[0]
    e = Event(Continuation(handler=noop), timeout_at=1.0)
    e.timeout_at = math.nan
    with pytest.raises(ValueError, match="e.timeout_at"):
        t.schedule(e)
    rec = Recorder()
    ep.schedule_in(rec, 0.01)
    assert rec.wait_count(1, timeout=2.0)


def test_one_bad_entry_does_not_drop_the_rest_of_a_batch(loose_thread, caplog) -> None:
    first, bad, last = Recorder(), Recorder(), Recorder()
    loose_thread.schedule_imm(first)
    e = loose_thread.schedule_imm(bad)
    loose_thread.schedule_imm(last)
    e.timeout_at = "spoiled after scheduling"  # type: ignore[assignment]
    loose_thread.run_pass(0)
    assert first.count == 1 and last.count == 1 and bad.count == 0


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: EThread(clock=lambda: math.nan), ValueError, "EThread: clock\\(\\) must not"),
        (lambda: EThread(clock=5), TypeError, "EThread: clock must be callable"),
        (lambda: EventProcessor(clock=lambda: math.nan), ValueError, "EventProcessor: clock"),
        (lambda: EventProcessor(clock=None), TypeError, "EventProcessor: clock must be"),
    ],
)
def test_clock_is_checked_at_construction(make, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make()


# ------------------------------------------------------------ 3: VIO.set_continuation


def test_vio_set_continuation_gives_a_mutex_and_checks_the_type() -> None:
    vio = VIO(VIOOp.READ)
    cont = Continuation(handler=noop)
    vio.set_continuation(cont)
    assert isinstance(vio.mutex, ProxyMutex) and vio.mutex is cont.mutex
    with pytest.raises(TypeError, match="VIO.set_continuation: cont must be a Continuation"):
        vio.set_continuation("x")

    class Duck:
        mutex = ProxyMutex()

    with pytest.raises(TypeError, match="VIO.set_continuation: cont must be a Continuation"):
        vio.set_continuation(Duck())
    assert vio.cont is cont


# ------------------------------------------------------------ 4, 20: check_continuation


def test_a_set_mutex_of_the_wrong_type_is_refused(loose_thread) -> None:
    c = Continuation(handler=noop)
    try:
        c.mutex = "not a mutex"  # type: ignore[assignment]
    except TypeError as exc:  # compiled (mypyc): the attribute itself is typed
        assert "ProxyMutex" in str(exc)
        return
    with pytest.raises(TypeError, match="schedule_imm: cont.mutex must be a ProxyMutex, not str"):
        loose_thread.schedule_imm(c)
    assert not loose_thread._ext


def test_an_uninitialised_continuation_subclass_is_refused(loose_thread) -> None:
    class NoInit(Continuation):
        def __init__(self) -> None:
            pass  # forgot super().__init__()

    with pytest.raises(TypeError, match="schedule_in: cont \\(NoInit\\) was not initialised"):
        loose_thread.schedule_in(NoInit(), 1.0)


def test_a_continuation_without_handler_is_refused(loose_thread) -> None:
    with pytest.raises(TypeError, match="schedule_imm: cont has no handler"):
        loose_thread.schedule_imm(Continuation())

    class Overrides(Continuation):
        def handle_event(self, event: int = 0, data: Any = None) -> Any:
            return None

    loose_thread.schedule_imm(Overrides())  # its own handle_event: no handler needed


# ------------------------------------------------------------ 5: run_pass / next_timer_ms


@pytest.mark.parametrize(
    "value, error",
    [(-1, ValueError), (-5, ValueError), (2**31, ValueError), (1.5, TypeError),
     ("x", TypeError), (None, TypeError), (True, TypeError), (math.nan, TypeError)],
)  # fmt: skip
def test_run_pass_checks_max_wait_ms(loose_thread, value: Any, error: type) -> None:
    waits: list[int] = []
    tail = loose_thread.tail_cb

    class Spy:
        def wait_for_activity(self, timeout_ms: int) -> None:
            waits.append(timeout_ms)
            tail.wait_for_activity(0)

        def close(self) -> None:
            tail.close()

    loose_thread.tail_cb = Spy()
    with pytest.raises(error, match="run_pass: max_wait_ms must"):
        loose_thread.run_pass(value)
    with pytest.raises(error, match="next_timer_ms: cap_ms must"):
        loose_thread.next_timer_ms(value)
    assert waits == []  # refused before the pass: no poll step, no wait
    loose_thread.run_pass(7)
    assert waits == [7]


# ------------------------------------------------------------ 6: shutdown(timeout)


@pytest.mark.parametrize(
    "value, error", [("x", TypeError), (math.nan, ValueError), (-2, ValueError)]
)
def test_shutdown_checks_timeout_before_stopping_anything(
    processor, value: Any, error: type
) -> None:
    ep = processor()
    with pytest.raises(error, match="shutdown: timeout must"):
        ep.shutdown(value)
    assert ep.started and all(t.is_alive for t in ep.threads())
    rec = Recorder()
    ep.schedule_imm(rec)
    assert rec.wait_count(1)


@pytest.mark.parametrize("value", [-1, math.inf, 10**30, None])
def test_shutdown_without_time_limit(value: Any) -> None:
    ep = EventProcessor()
    ep.start(1)
    threads = ep.threads()
    ep.shutdown(value)
    assert not ep.started and not any(t.is_alive for t in threads)


# ------------------------------------------------------------ 7: moving an event


def test_an_event_moved_to_another_thread_runs_once(processor, fake_clock) -> None:
    ep = processor(2, clock=fake_clock)
    a, b = ep.threads()
    rec = Recorder()
    filler = Continuation(handler=noop)
    for _ in range(20):
        a.schedule_in(filler, 100).cancel()
    e = a.schedule_in(rec, 0.1)
    k = e.seq
    # Per-thread sequence numbers would let B's next one equal the entry left on A.
    while True:
        d = b.schedule_in(filler, 100)
        d.cancel()
        if d.seq >= k - 1:
            break
    e.timeout_at = 0.0
    b.schedule(e)
    assert rec.wait_count(1)
    fake_clock.advance(0.25)  # past A's deadline for the stale entry
    assert rec.count == 1
    assert rec.calls[0][2] == b.tid


# ------------------------------------------------------------ 8: thread counts


def test_start_refuses_too_many_threads_before_starting_any() -> None:
    ep = EventProcessor()
    before = threading.active_count()
    with pytest.raises(ValueError, match="spawn_event_threads: n_threads must be at most 3072"):
        ep.start(10**30)
    with pytest.raises(ValueError, match="n_threads must be at most"):
        ep.spawn_event_threads(ET_CALL, MAX_THREADS_IN_EACH_TYPE + 1)
    assert threading.active_count() == before and not ep.started
    assert MAX_EVENT_THREADS == 4096


def test_a_failed_start_stops_the_threads_it_started() -> None:
    ep = EventProcessor()

    def hook(t: EThread) -> None:
        if t.id == 2:
            raise RuntimeError("third thread fails")

    ep.schedule_spawn(hook)
    with pytest.raises(RuntimeError, match="third thread fails"):
        ep.start(4)
    assert ep.n_threads_for_type() == 0 and not ep.started
    ep.start(1)  # thread 0 is fine
    assert ep.n_threads_for_type() == 1
    ep.shutdown(WAIT)


# ------------------------------------------------------------ 9, 16: sizes


@pytest.mark.parametrize("size", [MAX_BLOCK_SIZE + 1, 2**36, 2**63, 10**30])
def test_miobuffer_refuses_huge_blocks(size: int) -> None:
    with pytest.raises(ValueError, match="block_size must be between 1 and"):
        MIOBuffer(size)
    with pytest.raises(ValueError, match="IOBufferBlock: size must be between 0 and"):
        IOBufferBlock(size)


@pytest.mark.parametrize(
    "size, error",
    [(b"x", TypeError), ([], TypeError), (True, TypeError), (bytearray(2), TypeError),
     (memoryview(b"ab"), TypeError), (1.5, TypeError), (-1, ValueError)],
)  # fmt: skip
def test_iobufferblock_checks_size(size: Any, error: type) -> None:
    with pytest.raises(error, match="IOBufferBlock: size must"):
        IOBufferBlock(size)


# ------------------------------------------------------------ 10: callback_event


BAD_CODES = ["x", None, 1.5, math.nan, b"x", True]


@pytest.mark.parametrize("code", BAD_CODES)
@pytest.mark.parametrize(
    "call, args",
    [("schedule_imm", ()), ("schedule_imm_signal", ()), ("schedule_in", (1.0,)),
     ("schedule_at", (1.0,)), ("schedule_every", (1.0,))],
)  # fmt: skip
def test_schedulers_check_callback_event(
    processor, fake_clock, call: str, args: tuple, code: Any
) -> None:
    ep = processor(clock=fake_clock)
    rec = Recorder()
    for target in (ep, ep.threads()[0]):
        with pytest.raises(TypeError, match=f"^{call}: callback_event must be an int"):
            getattr(target, call)(rec, *args, callback_event=code)
    fake_clock.advance(2.0)  # past every delay the calls asked for
    assert rec.count == 0


@pytest.mark.parametrize("code", BAD_CODES)
def test_event_reschedule_checks_callback_event(loose_thread, code: Any) -> None:
    e = loose_thread.schedule_in(Recorder(), 100)
    for call, args in [("schedule_imm", ()), ("schedule_in", (1,)), ("schedule_at", (1,)),
                       ("schedule_every", (1,))]:  # fmt: skip
        if code is None:  # None keeps the event's code
            continue
        with pytest.raises(TypeError, match=f"Event.{call}: callback_event must be an int"):
            getattr(e, call)(*args, callback_event=code)
    with pytest.raises(TypeError, match="Event: callback_event must be an int"):
        Event(Continuation(handler=noop), code)


def test_int_codes_and_enum_members_are_accepted(loose_thread) -> None:
    rec = Recorder()
    loose_thread.schedule_imm(rec, callback_event=EventCode.VC_EVENT_READ_READY)
    loose_thread.schedule_imm(rec, callback_event=12345)
    loose_thread.run_pass(0)
    assert [c[0] for c in rec.calls] == [EventCode.VC_EVENT_READ_READY, 12345]


# ------------------------------------------------------------ 11: spawn hooks, slots


def test_wrong_arity_hook_and_factory_are_refused_and_not_kept(processor) -> None:
    ep = processor(start=False)
    with pytest.raises(TypeError, match="schedule_spawn: hook must accept one argument"):
        ep.schedule_spawn(lambda: None)  # type: ignore[arg-type,misc]
    with pytest.raises(TypeError, match="allocate: factory must accept one argument"):
        ep.allocate(lambda: None)  # type: ignore[arg-type,misc]
    ep.start(1)
    ep.spawn_event_threads(ET_CALL, 1)
    assert ep.n_threads_for_type() == 2


def test_a_hook_failing_on_running_threads_is_not_kept(processor) -> None:
    ep = processor()

    def hook(t: EThread) -> None:
        raise RuntimeError("hook fails")

    with pytest.raises(RuntimeError, match="hook fails"):
        ep.schedule_spawn(hook)
    ep.spawn_event_threads(ET_CALL, 1)
    assert ep.n_threads_for_type() == 2


# ------------------------------------------------------------ 12, 13: EThread


def test_ethread_start_checks_init_and_oneevent() -> None:
    d = EThread(DEDICATED)
    with pytest.raises(TypeError, match="start: oneevent must be an Event or None, not str"):
        d.start(oneevent="x")  # type: ignore[arg-type]
    assert not d.is_alive
    r = EThread()
    try:
        with pytest.raises(TypeError, match="start: init must be callable or None, not int"):
            r.start(init=5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="start: oneevent is for a DEDICATED thread"):
            r.start(oneevent=Event(Continuation(handler=noop)))
        assert not r.is_alive
    finally:
        r.join()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [({"tt": "bogus"}, ValueError, "EThread: tt must be REGULAR or DEDICATED"),
     ({"tt": None}, ValueError, "EThread: tt must be"),
     ({"clock": None}, TypeError, "EThread: clock must be callable"),
     ({"clock": lambda: "x"}, TypeError, "EThread: clock\\(\\) must be a number"),
     ({"name": 5}, TypeError, "EThread: name must be a str or None"),
     ({"etype": "x"}, TypeError, "EThread: etype must be an int"),
     ({"id": None}, TypeError, "EThread: id must be an int"),
     ({"id": True}, TypeError, "EThread: id must be an int")],
)  # fmt: skip
def test_ethread_constructor_checks_its_arguments(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        EThread(**kwargs)


# ------------------------------------------------------------ 14: Event / Action


def test_event_and_action_check_cont() -> None:
    with pytest.raises(TypeError, match="Event: cont must be a Continuation, not NoneType"):
        Event(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Event: cont must be a Continuation, not str"):
        Event("x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Action: cont must be a Continuation, not str"):
        Action("x")  # type: ignore[arg-type]
    assert Action().mutex is None
    c = Continuation(handler=noop)
    e = Event(c, timeout_at=3)
    assert isinstance(e.mutex, ProxyMutex) and e.mutex is c.mutex
    assert "at=3.000000" in repr(e)


# ------------------------------------------------------------ 15: get_slot


def test_get_slot_checks_offset(processor) -> None:
    ep = processor(start=False)
    a = ep.allocate(lambda t: "a")
    ep.start(1)
    t = ep.threads()[0]
    assert t.get_slot(a) == "a"
    for bad, error in [(-1, ValueError), (1, ValueError), (True, TypeError), (1.5, TypeError),
                       (None, TypeError)]:  # fmt: skip
        with pytest.raises(error, match="get_slot: .*offset"):
            t.get_slot(bad)


# ------------------------------------------------------------ 17: is_read_avail_more_than


@pytest.mark.parametrize("n", [math.nan, 1.5, True, "x", None])
def test_is_read_avail_more_than_checks_n(n: Any) -> None:
    r = MIOBuffer(64).alloc_reader()
    with pytest.raises(TypeError, match="n must be an int"):
        r.is_read_avail_more_than(n)


# ------------------------------------------------------------ 18: VIO


@pytest.mark.parametrize(
    "op, error", [("x", TypeError), (None, TypeError), (1.5, TypeError), (99, ValueError)]
)
def test_vio_checks_op(op: Any, error: type) -> None:
    with pytest.raises(error, match="VIO: op must be a VIOOp"):
        VIO(op)
    assert VIO(2).op == VIOOp.WRITE


def test_vio_refuses_a_deallocated_reader_and_reenables_nothing_without_a_vc() -> None:
    r = MIOBuffer(64).alloc_reader()
    r.dealloc()
    with pytest.raises(ValueError, match="VIO.set_reader: reader has been deallocated"):
        VIO(VIOOp.WRITE).set_reader(r)
    # No vc_server (never had one, or its VC was freed, which clears it): as ATS, a reenable
    # does nothing (a state machine may reenable a VIO whose VC just went away).
    vio = VIO(VIOOp.READ)
    vio.reenable()
    vio.reenable_re()
    assert vio.vc_server is None and vio.op == VIOOp.READ


# ------------------------------------------------------------ 19: thread names


@pytest.mark.parametrize("name, error", [(None, TypeError), (5, TypeError), (b"x", TypeError),
                                         ("", ValueError)])  # fmt: skip
def test_spawn_thread_and_spawn_event_threads_check_name(processor, name: Any, error: type) -> None:
    ep = processor(start=False)
    with pytest.raises(error, match="spawn_thread: name must"):
        ep.spawn_thread(Continuation(handler=noop), name)
    if name is not None:
        with pytest.raises(error, match="spawn_event_threads: name must"):
            ep.spawn_event_threads(ET_CALL, 1, name)
    assert not ep.dedicated and ep.n_threads_for_type() == 0


# ------------------------------------------------------------ 21: messages


def test_messages_name_the_call(processor) -> None:
    ep = processor()
    with pytest.raises(ValueError, match="^schedule_imm: unknown event type -1"):
        ep.schedule_imm(Recorder(), etype=-1)
    t = ep.register_event_type("ET_EMPTY")
    with pytest.raises(RuntimeError, match="^schedule_in: no ET_EMPTY threads"):
        ep.schedule_in(Recorder(), 1.0, etype=t)
    with pytest.raises(RuntimeError, match="^Event.schedule_at: the event was never"):
        Event(Continuation(handler=noop)).schedule_at(1)
    mv = memoryview(b"abc")
    mv.release()
    with pytest.raises(ValueError, match="MIOBuffer.write: data: "):
        MIOBuffer(64).write(mv)
