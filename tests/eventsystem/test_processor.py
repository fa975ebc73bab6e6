"""EventProcessor: thread groups, per-thread slots, spawn hooks, dedicated threads,
shutdown and restart, and its errors."""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import pytest

from ats_cffi.eventsystem import (
    DEDICATED,
    ET_CALL,
    ET_NET,
    EVENT_IMMEDIATE,
    Continuation,
    EThread,
    Event,
    EventProcessor,
    this_ethread,
)
from ats_cffi.eventsystem.processor import MAX_EVENT_TYPES
from tests.eventsystem.conftest import WAIT, Recorder, fd_targets, run_on, wait_until

EVENTFD = "anon_inode:[eventfd]"
EPOLL = "anon_inode:[eventpoll]"


def noop(event: int, data: Any) -> None:
    return None


# ------------------------------------------------------------------ per-thread slots


def test_allocated_slots_are_filled_per_thread_on_that_thread(processor) -> None:
    ep = processor(start=False)
    made: list[dict] = []

    def factory(t: EThread) -> dict:
        slot = {"thread": t, "ident": threading.get_ident()}
        made.append(slot)
        return slot

    a = ep.allocate(factory)
    b = ep.allocate()
    c = ep.allocate(lambda t: t.id * 10)
    assert (a, b, c) == (0, 1, 2)
    ep.start(3)
    threads = ep.threads()
    for t in threads:
        slot = run_on(t, lambda t=t: t.get_slot(a))
        assert slot["thread"] is t and slot["ident"] == t.tid  # built on its own thread
        assert t.get_slot(b) is None
        assert t.get_slot(c) == t.id * 10
    assert len(made) == 3 and len({id(s) for s in made}) == 3


def test_allocate_after_start_raises(processor) -> None:
    ep = processor(1)
    with pytest.raises(RuntimeError, match="allocate: slots must be allocated before start"):
        ep.allocate(lambda t: None)


def test_allocate_takes_only_a_callable_factory(processor) -> None:
    ep = processor(start=False)
    with pytest.raises(TypeError, match="allocate: factory must be callable"):
        ep.allocate(64)  # type: ignore[arg-type]


def test_failing_slot_factory_makes_start_raise_without_leaking_the_thread(processor) -> None:
    ep = processor(start=False)

    def factory(t: EThread) -> None:
        raise OSError("no slot")

    ep.allocate(factory)
    with pytest.raises(OSError, match="no slot"):
        ep.start(2)
    assert ep.threads() == []


# ---------------------------------------------------------------------- spawn hooks


def test_spawn_hook_registered_before_start_runs_on_each_thread_at_its_start(processor) -> None:
    ep = processor(start=False)
    seen = []
    ep.schedule_spawn(lambda t: seen.append((t, this_ethread(), threading.get_ident())))
    ep.start(2)
    assert len(seen) == 2  # start() returns once every thread ran it
    assert {s[0] for s in seen} == set(ep.threads())
    for t, current, ident in seen:
        assert current is t and ident == t.tid


def test_spawn_hook_registered_after_start_runs_on_running_and_later_threads(processor) -> None:
    ep = processor(2)
    seen = []
    ep.schedule_spawn(lambda t: seen.append((t, this_ethread())))
    assert len(seen) == 2  # schedule_spawn returns once every running thread ran it
    assert all(t is current for t, current in seen)
    assert {s[0] for s in seen} == set(ep.threads())
    ep.spawn_event_threads(ET_CALL, 1)
    assert len(seen) == 3 and seen[2][0] is ep.threads()[2]


def test_spawn_hook_that_raises_on_a_running_thread_is_raised_to_the_caller(processor) -> None:
    ep = processor(1)

    def hook(t: EThread) -> None:
        raise LookupError("hook failed")

    with pytest.raises(LookupError, match="hook failed"):
        ep.schedule_spawn(hook)
    rec = Recorder()
    ep.schedule_imm(rec)
    assert rec.wait_count(1)  # the thread goes on


def test_event_types_have_their_own_threads_and_hooks(processor) -> None:
    ep = processor(1)
    task = ep.register_event_type("ET_TASK")
    assert task == 1 and ep.register_event_type("ET_TASK") == task
    assert ep.register_event_type("ET_NET") == ET_NET == ET_CALL
    seen: list[EThread] = []
    ep.schedule_spawn(seen.append, task)  # no ET_TASK thread yet: nothing runs now
    assert seen == []
    ep.spawn_event_threads(task, 2, name="TASK")
    task_threads = ep.threads(task)
    assert seen == task_threads and [t.name for t in task_threads] == ["[TASK 0]", "[TASK 1]"]
    assert all(t.etype == task for t in task_threads)
    assert ep.n_threads_for_type(task) == 2 and ep.n_threads_for_type(ET_CALL) == 1
    rec = Recorder()
    for _ in range(4):
        ep.schedule_imm(rec, etype=task)
    assert rec.wait_count(4)
    assert {c[2] for c in rec.calls} == {t.tid for t in task_threads}


def test_assign_thread_is_round_robin(processor) -> None:
    ep = processor(3)
    threads = ep.threads()
    assert [ep.assign_thread() for _ in range(6)] == threads + threads


def test_every_scheduling_call_of_the_processor_delivers_on_its_threads(processor) -> None:
    ep = processor(2)
    rec = Recorder()
    events = [
        ep.schedule_imm(rec, cookie="imm"),
        ep.schedule_imm_signal(rec, cookie="signal"),
        ep.schedule_in(rec, 0.001, cookie="in"),
        ep.schedule_at(rec, ep.clock(), cookie="at"),
    ]
    every = ep.schedule_every(rec, 0.001, cookie="every")
    assert all(isinstance(e, Event) and e.ethread in ep.threads() for e in events + [every])
    assert wait_until(lambda: rec.cookies.count("every") >= 2)
    every.cancel()
    assert rec.wait_count(6)
    assert {"imm", "signal", "in", "at"} <= set(rec.cookies)


# ------------------------------------------------------------------ dedicated threads


def test_spawn_thread_runs_its_continuation_once_and_shutdown_joins_it(processor) -> None:
    ep = processor(1)
    regular = ep.threads()[0]
    ran = []
    finished = threading.Event()

    def handler(event: int, e: Event) -> None:
        ran.append((event, this_ethread(), e.ethread, threading.get_ident()))
        # Still running when shutdown() is called: until it has stopped the regular thread.
        wait_until(lambda: not regular.is_alive, what="shutdown() to stop the event thread")
        finished.set()

    t = ep.spawn_thread(Continuation(handler=handler), "[ACCEPT 0]")
    assert t.tt == DEDICATED and t.name == "[ACCEPT 0]"
    assert t.evfd is None and t.tail_cb is None  # a dedicated thread owns no fds
    assert wait_until(lambda: ran)
    ep.shutdown()
    assert finished.is_set() and not t.is_alive
    assert ran == [(EVENT_IMMEDIATE, t, t, t.tid)]


def test_shutdown_names_a_dedicated_thread_that_does_not_end(processor) -> None:
    ep = processor(1)
    release = threading.Event()
    t = ep.spawn_thread(Continuation(handler=lambda ev, e: release.wait(WAIT)), "[STUCK]")
    try:
        with pytest.raises(RuntimeError, match=r"threads still running: .*\[STUCK\]"):
            ep.shutdown(timeout=0.05)
    finally:
        release.set()
        assert t.join(WAIT)


def test_dedicated_handler_that_raises_is_logged(processor, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="ats.iocore_thread")
    ep = processor(start=False)
    t = ep.spawn_thread(Continuation(handler=lambda ev, e: {}["missing"]), "[BAD]")
    assert t.join(WAIT)
    assert "[BAD]: dedicated handler raised" in caplog.text and "KeyError" in caplog.text


# -------------------------------------------------------------- shutdown and restart


def test_shutdown_leaves_no_thread_epoll_fd_or_eventfd_behind(processor) -> None:
    before = fd_targets()
    threads_before = set(threading.enumerate())
    ep = processor(3)
    opened = sorted(target for fd, target in fd_targets().items() if fd not in before)
    assert opened == sorted([EVENTFD] * 3 + [EPOLL] * 3)  # one of each per thread
    os_threads = [t for t in threading.enumerate() if t not in threads_before]
    assert sorted(t.name for t in os_threads) == ["[ET_NET 0]", "[ET_NET 1]", "[ET_NET 2]"]
    ep.shutdown()
    assert fd_targets().keys() == before.keys()
    assert not any(t.is_alive() for t in os_threads)
    assert ep.threads() == [] and not ep.started


def test_processor_starts_again_after_shutdown_in_a_fresh_state(processor) -> None:
    ep = processor(start=False)
    hooked: list[EThread] = []
    ep.schedule_spawn(hooked.append)
    slot = ep.allocate(lambda t: "slot")
    ep.start(2)
    first = ep.threads()
    assert run_on(first[0], lambda: first[0].get_slot(slot)) == "slot"
    ep.shutdown()
    before = fd_targets()
    ep.start(2)  # hooks and slots of the previous run are gone
    second = ep.threads()
    assert len(hooked) == 2 and not set(first) & set(second)
    assert run_on(second[0], lambda: second[0].slots) == []
    rec = Recorder()
    for _ in range(2):
        ep.schedule_imm(rec)
    assert rec.wait_count(2)
    assert {c[2] for c in rec.calls} == {t.tid for t in second}
    ep.shutdown()
    assert fd_targets().keys() == before.keys()
    assert ep.allocate(lambda t: None) == 0  # configurable again


def test_shutdown_of_a_processor_never_started_does_nothing() -> None:
    EventProcessor().shutdown()


def test_start_while_running_raises(processor) -> None:
    ep = processor(1)
    with pytest.raises(RuntimeError, match="start: the event processor is already running"):
        ep.start(1)


# ----------------------------------------------------------------------- bad input


def test_assign_thread_with_no_threads_raises_runtime_error(processor) -> None:
    ep = processor(start=False)
    with pytest.raises(RuntimeError, match="assign_thread: no ET_NET threads are running"):
        ep.assign_thread()
    with pytest.raises(RuntimeError, match="no ET_NET threads"):
        ep.schedule_imm(Recorder())


@pytest.mark.parametrize(
    "call, args",
    [
        ("assign_thread", (5,)),
        ("threads", (-1,)),
        ("n_threads_for_type", (MAX_EVENT_TYPES,)),
        ("spawn_event_threads", (99, 1)),
        ("schedule_spawn", (noop, 7)),
    ],
)
def test_unknown_event_type_raises_value_error_naming_the_call(processor, call, args) -> None:
    ep = processor(start=False)
    with pytest.raises(ValueError, match=f"^{call}: unknown event type"):
        getattr(ep, call)(*args)


def test_event_type_must_be_an_int(processor) -> None:
    ep = processor(start=False)
    with pytest.raises(TypeError, match="assign_thread: etype must be an int, not str"):
        ep.assign_thread("0")  # type: ignore[arg-type]


@pytest.mark.parametrize("n, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError)])
def test_bad_thread_count_raises_and_starts_nothing(processor, n, error) -> None:
    ep = processor(start=False)
    with pytest.raises(error, match="spawn_event_threads: n_threads must be"):
        ep.start(n)
    assert ep.threads() == [] and not ep.started
    ep.allocate()  # still before start
    ep.start(1)
    assert ep.n_threads_for_type() == 1


@pytest.mark.parametrize(
    "call, args",
    [
        ("schedule_imm", ()),
        ("schedule_imm_signal", ()),
        ("schedule_in", (1.0,)),
        ("schedule_at", (1.0,)),
        ("schedule_every", (1.0,)),
        ("spawn_thread", ("[X]",)),
    ],
)
def test_scheduling_a_non_continuation_raises_type_error_naming_the_call(
    processor, call, args
) -> None:
    ep = processor(1)
    with pytest.raises(TypeError, match=f"^{call}: cont must be a Continuation, not function"):
        getattr(ep, call)(noop, *args)
    assert ep.dedicated == []


@pytest.mark.parametrize(
    "call, value, error",
    [
        ("schedule_in", -1.0, ValueError),
        ("schedule_in", math.nan, ValueError),
        ("schedule_at", math.nan, ValueError),
        ("schedule_every", math.nan, ValueError),
        ("schedule_every", 0, ValueError),
    ],
)
def test_bad_times_through_the_processor_raise(processor, call, value, error) -> None:
    ep = processor(1)
    with pytest.raises(error, match=f"^{call}: "):
        getattr(ep, call)(Recorder(), value)


def test_register_event_type_checks_its_name_and_the_type_limit(processor) -> None:
    ep = processor(start=False)
    with pytest.raises(ValueError, match="register_event_type: name must not be empty"):
        ep.register_event_type("")
    with pytest.raises(TypeError, match="register_event_type: name must be a str, not int"):
        ep.register_event_type(5)  # type: ignore[arg-type]
    for i in range(1, MAX_EVENT_TYPES):
        assert ep.register_event_type(f"ET_{i}") == i
    with pytest.raises(ValueError, match=f"at most {MAX_EVENT_TYPES} event types"):
        ep.register_event_type("ET_ONE_TOO_MANY")


def test_schedule_spawn_takes_only_a_callable(processor) -> None:
    ep = processor(start=False)
    with pytest.raises(TypeError, match="schedule_spawn: hook must be callable"):
        ep.schedule_spawn("hook")  # type: ignore[arg-type]


def test_shutdown_and_schedule_spawn_refuse_to_run_on_their_own_event_thread() -> None:
    import threading as _threading

    from ats_cffi.eventsystem import Continuation, EventProcessor

    ep = EventProcessor()
    ep.start(1)
    errors: list[BaseException] = []
    done = _threading.Event()

    def on_thread(event: int, e: object) -> None:
        for call in (lambda: ep.shutdown(), lambda: ep.schedule_spawn(lambda t: None)):
            try:
                call()
            except RuntimeError as exc:
                errors.append(exc)
        done.set()

    try:
        ep.threads()[0].schedule_imm(Continuation(handler=on_thread))
        assert done.wait(5)
    finally:
        ep.shutdown()
    assert len(errors) == 2
    assert "shutdown" in str(errors[0]) and "schedule_spawn" in str(errors[1])
