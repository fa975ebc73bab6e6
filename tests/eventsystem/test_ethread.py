"""EThread's loop on real threads and real eventfds: ordering, wake-ups, timers, periods,
cancellation, mutex retry and handler errors."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ats_cffi.eventsystem import (
    DEDICATED,
    EVENT_IMMEDIATE,
    EVENT_INTERVAL,
    Continuation,
    EThread,
    Event,
    ProxyMutex,
    this_ethread,
)
from ats_cffi.eventsystem.ethread import DELAY_FOR_RETRY, EVERY_PASS_MAX_WAIT_MS
from tests.conftest import CountingMutex, widen_race_window
from tests.eventsystem.conftest import WAIT, HeldElsewhere, Recorder, run_on, wait_until


def noop(event: int, data: Any) -> None:
    return None


@contextmanager
def blocked(thread: EThread) -> Iterator[None]:
    """Keep ``thread`` inside a handler (off ``epoll_wait``) for the body of the block."""
    entered, release = threading.Event(), threading.Event()

    def handler(event: int, e: Event) -> None:
        entered.set()
        release.wait(WAIT)

    thread.schedule_imm(Continuation(handler=handler))
    assert entered.wait(WAIT), "the blocking handler never ran"
    try:
        yield
    finally:
        release.set()


class CountingTail:
    """Wraps a thread's poll step to count the loop passes and record each wait's timeout.

    With ``hour_long``, a wait the loop asks for longer than ``EVERY_PASS_MAX_WAIT_MS``
    (an idle sleep) lasts an hour instead: only the eventfd can end it in a test's time.
    ``asleep`` is true from just before such a wait until it returns.
    """

    def __init__(self, inner: Any, hour_long: bool = False) -> None:
        self.inner = inner
        self.polls = 0
        self.timeouts: list[int] = []
        self.hour_long = hour_long
        self.asleep = False

    def wait_for_activity(self, timeout_ms: int) -> None:
        self.polls += 1
        self.timeouts.append(timeout_ms)
        if self.hour_long and timeout_ms > EVERY_PASS_MAX_WAIT_MS:
            self.asleep = True
            self.inner.wait_for_activity(3_600_000)
            self.asleep = False
        else:
            self.inner.wait_for_activity(timeout_ms)

    def close(self) -> None:
        self.inner.close()


def install_counting_tail(t: EThread, hour_long: bool = False) -> CountingTail:
    def install() -> CountingTail:
        tail = CountingTail(t.tail_cb, hour_long)
        t.tail_cb = tail
        return tail

    return run_on(t, install)


class CancelOnTryLock(ProxyMutex):
    """Has another thread cancel ``victim`` just as the loop tries the mutex: the
    narrowest cross-thread cancel race (after the queue's check, before delivery),
    made deterministic."""

    def __init__(self) -> None:
        super().__init__()
        self.victim: Event | None = None

    def try_lock(self) -> bool:
        victim, self.victim = self.victim, None
        if victim is not None:
            canceller = threading.Thread(target=victim.cancel)
            canceller.start()
            canceller.join(WAIT)
        return super().try_lock()


@pytest.fixture
def one(processor) -> EThread:
    """The single thread of a started one-thread EventProcessor."""
    return processor(1).threads()[0]


# ------------------------------------------------------------------- schedule_imm


def test_cross_thread_schedule_imm_runs_each_event_once_in_order(one) -> None:
    rec = Recorder()
    for i in range(200):
        one.schedule_imm(rec, cookie=i)
    assert rec.wait_count(200)
    run_on(one, lambda: None)  # whatever was queued before this has run
    assert rec.cookies == list(range(200))
    assert {ident for _, _, ident, _ in rec.calls} == {one.tid}
    assert {code for code, _, _, _ in rec.calls} == {EVENT_IMMEDIATE}


def test_schedule_imm_from_several_threads_keeps_each_producers_order_per_thread(
    processor,
) -> None:
    ep = processor(2)
    rec = Recorder()
    producers = 4
    per = 100

    def produce(p: int) -> None:
        for i in range(per):
            ep.schedule_imm(rec, cookie=(p, i))

    workers = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(WAIT)
    assert rec.wait_count(producers * per)
    for t in ep.threads():
        run_on(t, lambda: None)
    assert sorted(rec.cookies) == [(p, i) for p in range(producers) for i in range(per)]
    tids = {t.tid for t in ep.threads()}
    for tid in tids:
        for p in range(producers):
            seq = [c[1][1] for c in rec.calls if c[2] == tid and c[1][0] == p]
            assert seq == sorted(seq), f"producer {p} reordered on thread {tid}"
    assert {c[2] for c in rec.calls} == tids  # round-robin used both threads


def test_same_thread_schedule_imm_runs_each_event_once_in_order_after_the_handler(one) -> None:
    rec = Recorder()

    def schedule_from_the_thread() -> int:
        assert this_ethread() is one
        for i in range(50):
            one.schedule_imm(rec, cookie=i)
        return rec.count  # nothing may run inside the scheduling handler

    assert run_on(one, schedule_from_the_thread) == 0
    assert rec.wait_count(50)
    run_on(one, lambda: None)
    assert rec.cookies == list(range(50))
    assert {c[2] for c in rec.calls} == {one.tid}


def test_event_rescheduled_from_its_own_handler_runs_once_per_schedule(one) -> None:
    runs = []

    def again(event: int, e: Event) -> None:
        runs.append(event)
        if len(runs) < 5:
            e.schedule_imm(callback_event=100 + len(runs))

    one.schedule_imm(Continuation(handler=again))
    assert wait_until(lambda: len(runs) >= 5)
    run_on(one, lambda: None)
    assert runs == [EVENT_IMMEDIATE, 101, 102, 103, 104]


def test_event_queued_by_a_handler_runs_on_the_next_pass_after_the_poll_step(one) -> None:
    tail = install_counting_tail(one)
    polls = []

    def again(event: int, e: Event) -> None:
        polls.append(tail.polls)
        if len(polls) < 4:
            e.schedule_imm()  # same thread: must not run inside this pass

    one.schedule_imm(Continuation(handler=again))
    assert wait_until(lambda: len(polls) >= 4)
    assert all(b > a for a, b in zip(polls, polls[1:])), polls


# ------------------------------------------------------------------------ wake-ups


def test_idle_thread_wakes_for_a_cross_thread_schedule_through_its_eventfd(one) -> None:
    # With no timer due, the thread sleeps in epoll_wait (MAX_IDLE_WAIT_MS); here its poll
    # step sleeps an hour: only the eventfd write can wake it for the event.
    tail = install_counting_tail(one, hour_long=True)
    rec = Recorder()
    for i in range(3):
        wait_until(lambda: tail.asleep, what="the thread asleep in its poll step")
        before = one.signal_count
        one.schedule_imm(rec, cookie=i)
        assert rec.wait_count(i + 1)
        assert one.signal_count == before + 1
    assert rec.cookies == [0, 1, 2]


def test_burst_of_cross_thread_schedules_writes_the_eventfd_once(one) -> None:
    rec = Recorder()
    with blocked(one):
        one.evfd.read()  # the blocking handler's own wake-up, if not consumed yet
        before = one.signal_count
        for i in range(10):
            one.schedule_imm(rec, cookie=i)
        assert one.signal_count == before + 1
        assert one.evfd.read() == 1  # one eventfd write for the whole burst
        one.evfd.write(1)  # give the wake-up back
    assert rec.wait_count(10)
    assert one.signal_count == before + 1
    assert rec.cookies == list(range(10))


def test_schedule_imm_signal_writes_the_eventfd_every_time(one) -> None:
    rec = Recorder()
    with blocked(one):
        one.evfd.read()
        before = one.signal_count
        for i in range(3):
            one.schedule_imm_signal(rec, cookie=i)
        assert one.signal_count == before + 3
        assert one.evfd.read() == 3
        one.evfd.write(3)
    assert rec.wait_count(3)
    assert rec.cookies == [0, 1, 2]


def test_same_thread_scheduling_never_writes_the_eventfd(one) -> None:
    rec = Recorder()

    def schedule_all() -> tuple[int, int]:
        before = one.signal_count
        for i in range(5):
            one.schedule_imm(rec, cookie=i)
        one.schedule_in(rec, 0.001, cookie="in")
        one.schedule_at(rec, one.clock(), cookie="at")
        e = one.schedule_every(rec, -1, cookie="every")
        e.cancel()
        return before, one.signal_count

    before, after = run_on(one, schedule_all)
    assert after == before
    assert rec.wait_count(7)
    assert one.signal_count == before  # delivering them did not signal either


# --------------------------------------------------------------- timers (fake clock)


def test_timers_fire_in_deadline_order_and_never_early(loose_thread, fake_clock) -> None:
    t, rec = loose_thread, Recorder()
    now = fake_clock.now
    t.schedule_at(rec, now + 5, cookie=5)
    t.schedule_in(rec, 1, cookie=1)
    t.schedule_at(rec, now + 3, cookie=3)
    t.schedule_in(rec, 2, cookie=2)
    t.schedule_in(rec, 4, cookie=4)
    t.schedule_in(rec, 2, cookie="2b")  # same deadline as 2: first come, first run
    t.run_pass(0)
    assert rec.cookies == []
    fake_clock.advance(0.5)
    t.run_pass(0)
    assert rec.cookies == []
    fake_clock.advance(0.5)
    t.run_pass(0)
    assert rec.cookies == [1]
    fake_clock.advance(10)
    t.run_pass(0)
    assert rec.cookies == [1, 2, "2b", 3, 4, 5]
    assert {c[0] for c in rec.calls} == {EVENT_INTERVAL}
    fake_clock.advance(10)
    t.run_pass(0)
    assert rec.count == 6


def test_cancelled_timer_never_fires(loose_thread, fake_clock) -> None:
    rec = Recorder()
    e = loose_thread.schedule_in(rec, 1, cookie="cancelled")
    loose_thread.schedule_in(rec, 2, cookie="kept")
    e.cancel()
    fake_clock.advance(5)
    loose_thread.run_pass(0)
    assert rec.cookies == ["kept"]


def test_next_timer_ms_reports_the_nearest_deadline_capped(loose_thread, fake_clock) -> None:
    t = loose_thread
    assert t.next_timer_ms(1000) == 1000
    t.schedule_in(Recorder(), 0.25)
    t.run_pass(0)
    assert t.next_timer_ms(1000) == 250
    assert t.next_timer_ms(100) == 100
    fake_clock.advance(1)
    assert t.next_timer_ms(1000) == 0


def test_sleeping_thread_on_a_fake_clock_fires_timers_when_woken(processor, fake_clock) -> None:
    t = processor(1, clock=fake_clock, settled=False).threads()[0]  # the test wakes it
    rec = Recorder()
    t.schedule_in(rec, 5.0, cookie="late")
    t.schedule_in(rec, 1.0, cookie="early")
    run_on(t, lambda: None)
    assert rec.count == 0
    fake_clock.advance(1.0)
    t.signal()
    assert rec.wait_count(1)
    run_on(t, lambda: None)
    assert rec.cookies == ["early"]
    fake_clock.advance(10.0)
    t.signal()
    assert rec.wait_count(2)
    assert rec.cookies == ["early", "late"]


def test_timer_at_an_unreachable_deadline_does_not_end_the_loop(one) -> None:
    # (deadline - now) * 1000 is an infinite float here: the poll timeout must be capped
    # before it is made an int, or the thread dies with OverflowError.
    never = Recorder()
    one.schedule_in(never, math.inf)
    one.schedule_at(never, 1e308)
    run_on(one, lambda: None)
    assert run_on(one, lambda: one.next_timer_ms(1000)) == 1000
    assert one.is_alive and never.count == 0


# ----------------------------------------------------------------- schedule_every


def test_periodic_event_runs_each_period_and_restarts_from_now_when_late(
    loose_thread, fake_clock
) -> None:
    t, rec = loose_thread, Recorder()
    t.schedule_every(rec, 2.0)
    t.run_pass(0)
    fake_clock.advance(1.5)
    t.run_pass(0)
    assert rec.count == 0
    fake_clock.advance(0.5)
    t.run_pass(0)
    assert rec.count == 1
    fake_clock.advance(2.0)
    t.run_pass(0)
    assert rec.count == 2
    fake_clock.advance(20.0)  # the loop was late by many periods: one run, no burst
    t.run_pass(0)
    t.run_pass(0)
    assert rec.count == 3
    fake_clock.advance(1.5)
    t.run_pass(0)
    assert rec.count == 3
    fake_clock.advance(0.5)
    t.run_pass(0)
    assert rec.count == 4


def test_periodic_event_on_a_running_thread_runs_each_period_never_early(
    processor, fake_clock
) -> None:
    one = processor(1, clock=fake_clock).threads()[0]
    rec, period = Recorder(), 0.25
    start = fake_clock.now
    e = one.schedule_every(rec, period)
    for k in range(5):
        fake_clock.advance(period / 2)  # half a period: not yet
        assert rec.count == k
        fake_clock.advance(period / 2)
        assert rec.count == k + 1
    e.cancel()
    fake_clock.advance(period)
    assert [c[3] - start for c in rec.calls] == [(k + 1) * period for k in range(5)]


def test_every_pass_event_runs_once_per_loop_pass(loose_thread) -> None:
    rec = Recorder()
    e = loose_thread.schedule_every(rec, -1)
    for _ in range(5):
        loose_thread.run_pass(0)
    assert rec.count == 5
    e.cancel()
    loose_thread.run_pass(0)
    assert rec.count == 5


def test_every_pass_event_on_a_real_thread_runs_once_per_poll_step(one) -> None:
    tail = install_counting_tail(one)
    ticker = one.schedule_every(Continuation(handler=noop), 0.001)  # keeps passes coming
    rec = Recorder()
    e = one.schedule_every(rec, -1)

    def snapshot() -> tuple[int, int]:
        return rec.count, tail.polls

    runs0, polls0 = run_on(one, snapshot)
    assert rec.wait_count(runs0 + 20)
    runs1, polls1 = run_on(one, snapshot)
    e.cancel()
    ticker.cancel()
    assert runs1 - runs0 == polls1 - polls0 >= 20


@pytest.mark.parametrize("period", [1.0, -1])
def test_cancel_inside_the_handler_stops_a_repeating_event(
    loose_thread, fake_clock, period
) -> None:
    runs = []

    def handler(event: int, e: Event) -> None:
        runs.append(event)
        if len(runs) == 3:
            e.cancel()

    loose_thread.schedule_every(Continuation(handler=handler), period)
    for _ in range(8):
        fake_clock.advance(1.0)
        loose_thread.run_pass(0)
    assert len(runs) == 3


@pytest.mark.parametrize("period", [1.0, -1])
def test_cancel_inside_the_handler_on_a_running_thread(processor, fake_clock, period) -> None:
    t = processor(1, clock=fake_clock).threads()[0]
    runs = []

    def handler(event: int, e: Event) -> None:
        runs.append(event)
        if len(runs) == 3:
            e.cancel()

    t.schedule_every(Continuation(handler=handler), period)
    for _ in range(20):  # 20 periods, each settled: at least 40 passes
        fake_clock.advance(1.0)
    assert len(runs) == 3


def test_no_callback_after_cancel_returns_from_another_thread(processor, fake_clock) -> None:
    ep = processor(2, clock=fake_clock)
    threads = ep.threads()
    violations: list[str] = []
    counts: list[int] = []
    returned: list[bool] = []
    snapshots: list[int] = []

    def make(i: int) -> Continuation:
        def handler(event: int, e: Event) -> None:
            if returned[i]:
                violations.append(f"round {i}: callback after cancel() returned")
            if e.cancelled:
                violations.append(f"round {i}: callback of a cancelled event")
            counts[i] += 1  # first: the test thread often cancels while the handler runs
            widen_race_window()
            if returned[i]:
                violations.append(f"round {i}: handler still running after cancel() returned")

        return Continuation(handler=handler)

    for i in range(40):
        counts.append(0)
        returned.append(False)
        t = threads[i % 2]
        period = -1 if i % 4 < 2 else 1.0
        e = t.schedule_every(make(i), period)
        want = i % 3  # cancel before the first run, after one, after two
        for _ in range(want):  # every-pass events run on their own; timers as time moves
            if counts[i] < want:
                fake_clock.advance(1.0)
        assert counts[i] >= want
        # The next period is due and the thread woken (not settled): cancel() races the run.
        fake_clock.now += 1.0
        t.signal()
        e.cancel()
        returned[i] = True
        snapshots.append(counts[i])
    for _ in range(10):  # ten more periods, each settled: dozens of passes on both threads
        fake_clock.advance(1.0)
    assert violations == []
    assert counts == snapshots


@pytest.mark.parametrize("kind", ["imm", "timer", "every-pass"])
def test_cancel_landing_between_dequeue_and_delivery_prevents_the_callback(
    loose_thread, fake_clock, kind
) -> None:
    rec = Recorder()
    rec.mutex = CancelOnTryLock()
    if kind == "imm":
        e = loose_thread.schedule_imm(rec)
    elif kind == "timer":
        e = loose_thread.schedule_every(rec, 1.0)
    else:
        e = loose_thread.schedule_every(rec, -1)
    rec.mutex.victim = e
    fake_clock.advance(1.0)
    loose_thread.run_pass(0)
    fake_clock.advance(1.0)
    loose_thread.run_pass(0)
    assert e.cancelled and rec.mutex.victim is None
    assert rec.count == 0


def test_schedule_every_with_a_zero_period_is_rejected(loose_thread) -> None:
    with pytest.raises(ValueError, match="schedule_every: period must not be 0"):
        loose_thread.schedule_every(Recorder(), 0)


# ------------------------------------------------------------- mutexes and retries


def test_handlers_run_with_the_continuation_mutex_held(one) -> None:
    c = Continuation()  # gets a mutex at its first schedule
    seen = []

    def handler(event: int, e: Event) -> None:
        m = c.mutex
        seen.append((m.held_by_me(), e.mutex is m, m.nthread_holding, this_ethread() is one))

    c.set_handler(handler)
    one.schedule_imm(c)
    one.schedule_in(c, 0.001)
    assert wait_until(lambda: len(seen) == 2)
    assert seen == [(True, True, 1, True)] * 2
    assert c.mutex.thread_holding is None


def test_event_whose_mutex_is_busy_is_retried_and_delivered_once_free(
    loose_thread, fake_clock
) -> None:
    t, rec = loose_thread, Recorder()
    rec.mutex = ProxyMutex()
    holder = HeldElsewhere(rec.mutex)
    try:
        t.schedule_imm(rec)
        t.run_pass(0)
        assert rec.count == 0
        assert t.next_timer_ms(1000) == pytest.approx(DELAY_FOR_RETRY * 1000, abs=1)
        fake_clock.advance(DELAY_FOR_RETRY)
        t.run_pass(0)  # still held: retried again later
        assert rec.count == 0
    finally:
        holder.release()
    t.run_pass(0)  # free now, but the retry is not due yet
    assert rec.count == 0
    fake_clock.advance(DELAY_FOR_RETRY)
    t.run_pass(0)
    assert rec.count == 1
    fake_clock.advance(1)
    t.run_pass(0)
    t.run_pass(0)
    assert rec.count == 1
    assert rec.calls[0][2] == threading.get_ident()


def test_every_pass_event_with_a_busy_mutex_is_skipped_until_it_is_free(loose_thread) -> None:
    t, rec = loose_thread, Recorder()
    rec.mutex = ProxyMutex()
    holder = HeldElsewhere(rec.mutex)
    try:
        t.schedule_every(rec, -1)
        for _ in range(3):
            t.run_pass(0)
        assert rec.count == 0
        assert t.next_timer_ms(1000) == 1000  # no retry timer: the next pass tries again
    finally:
        holder.release()
    t.run_pass(0)
    t.run_pass(0)
    assert rec.count == 2


def test_busy_mutex_on_a_real_thread_delays_delivery_until_released(one) -> None:
    rec = Recorder()
    rec.mutex = CountingMutex()
    holder = HeldElsewhere(rec.mutex)
    try:
        one.schedule_imm(rec)
        assert wait_until(lambda: rec.mutex.tries >= 3)  # retried every DELAY_FOR_RETRY
        assert rec.count == 0
    finally:
        holder.release()
    assert rec.wait_count(1)
    run_on(one, lambda: None)
    assert rec.count == 1 and rec.calls[0][2] == one.tid


def test_continuations_sharing_a_mutex_never_run_at_once_on_two_threads(processor) -> None:
    ep = processor(2)
    shared = ProxyMutex()
    active = []
    overlaps = []
    done = []

    def handler(event: int, e: Event) -> None:
        if active:
            overlaps.append(e.cookie)
        active.append(e.cookie)
        widen_race_window()
        active.pop()
        done.append(e.cookie)

    for t in ep.threads():
        for i in range(8):
            t.schedule_imm(Continuation(shared, handler), cookie=(t.id, i))
    assert wait_until(lambda: len(done) == 16)
    assert overlaps == []
    assert sorted(done) == [(tid, i) for tid in (0, 1) for i in range(8)]


# ------------------------------------------------------------------ handler errors


def test_handler_that_raises_is_logged_with_traceback_and_the_thread_goes_on(one, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="ats.iocore_thread")
    boom = Continuation(handler=lambda ev, e: 1 / 0)
    one.schedule_imm(boom)
    after = Recorder()
    one.schedule_imm(after)
    assert after.wait_count(1)
    records = [r for r in caplog.records if r.name == "ats.iocore_thread"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None and records[0].exc_info[0] is ZeroDivisionError
    assert one.name in records[0].getMessage()
    assert "Traceback" in caplog.text and "1 / 0" in caplog.text
    assert boom.mutex.thread_holding is None  # released despite the exception
    assert one.is_alive


def test_periodic_handler_that_raises_keeps_its_schedule(loose_thread, fake_clock, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="ats.iocore_thread")
    runs = []

    def handler(event: int, e: Event) -> None:
        runs.append(event)
        raise RuntimeError("periodic failure")

    loose_thread.schedule_every(Continuation(handler=handler), 1.0)
    for _ in range(3):
        fake_clock.advance(1.0)
        loose_thread.run_pass(0)
    assert len(runs) == 3
    assert caplog.text.count("periodic failure") >= 3


# ----------------------------------------------------------------- thread lifecycle


def test_this_ethread_names_the_running_event_thread_only(one) -> None:
    assert this_ethread() is None
    assert run_on(one, this_ethread) is one


def test_scheduling_onto_a_thread_while_it_exits_never_raises() -> None:
    # The eventfd write of a cross-thread schedule once raced the exiting thread closing
    # its eventfd: OSError(EBADF) in the scheduler (or a write into a reused fd number).
    cont = Continuation(handler=noop)
    for _ in range(40):
        t = EThread()
        t.start()
        errors: list[BaseException] = []
        stop = threading.Event()
        producing = threading.Event()

        def produce(
            t: EThread = t,
            errors: list = errors,
            stop: threading.Event = stop,
            producing: threading.Event = producing,
        ) -> None:
            while not stop.is_set():
                try:
                    t.schedule_imm_signal(cont)
                except BaseException as exc:
                    errors.append(exc)
                    return
                producing.set()

        p = threading.Thread(target=produce)
        p.start()
        assert producing.wait(WAIT)  # the producer is in its loop: stop() lands amid it
        t.stop()
        joined = t.join(WAIT)
        stop.set()
        p.join(WAIT)
        assert joined and not p.is_alive()
        assert errors == []
        assert t.evfd is None and t.tail_cb is None


def test_start_runs_init_on_the_new_thread_before_returning() -> None:
    t = EThread()
    seen = []
    t.start(lambda th: seen.append((th, this_ethread(), threading.get_ident())))
    try:
        assert seen == [(t, t, t.tid)] and t.tid != threading.get_ident()
        with pytest.raises(RuntimeError, match="already started"):
            t.start()
    finally:
        t.stop()
        assert t.join(WAIT)


def test_failing_init_raises_from_start_and_releases_the_thread_fds() -> None:
    t = EThread()

    def init(th: EThread) -> None:
        raise OSError("init failed")

    with pytest.raises(OSError, match="init failed"):
        t.start(init)
    assert not t.is_alive and t.evfd is None


def test_stopped_thread_ends_and_closes_its_eventfd_and_epoll_fd(one) -> None:
    evfd, tail = one.evfd, one.tail_cb
    one.stop()
    assert one.join(WAIT)
    # Closed by the thread itself, not left to the garbage collector (held here).
    assert evfd.fd == -1 and tail.epoll.closed
    assert one.evfd is None and one.tail_cb is None


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, args",
    [
        ("schedule_imm", ()),
        ("schedule_imm_signal", ()),
        ("schedule_in", (1.0,)),
        ("schedule_at", (1.0,)),
        ("schedule_every", (1.0,)),
    ],
)
def test_scheduling_a_non_continuation_raises_type_error_naming_the_call(
    loose_thread, call, args
) -> None:
    with pytest.raises(TypeError, match=f"^{call}: cont must be a Continuation, not function"):
        getattr(loose_thread, call)(noop, *args)


@pytest.mark.parametrize(
    "call, value, error, message",
    [
        ("schedule_in", -0.001, ValueError, "schedule_in: delay must be >= 0"),
        ("schedule_in", math.nan, ValueError, "schedule_in: delay must not be NaN"),
        ("schedule_in", "1", TypeError, "schedule_in: delay must be a number, not str"),
        ("schedule_in", True, TypeError, "schedule_in: delay must be a number, not bool"),
        ("schedule_at", -1.0, ValueError, "schedule_at: atime must be >= 0"),
        ("schedule_at", math.nan, ValueError, "schedule_at: atime must not be NaN"),
        ("schedule_every", math.nan, ValueError, "schedule_every: period must not be NaN"),
        ("schedule_every", None, TypeError, "schedule_every: period must be a number"),
    ],
)
def test_bad_times_raise_clear_errors(loose_thread, call, value, error, message) -> None:
    with pytest.raises(error, match=f"^{message}"):
        getattr(loose_thread, call)(Recorder(), value)
    assert loose_thread.signal_count == 0  # nothing was queued


@pytest.mark.parametrize(
    "call, value, error, message",
    [
        ("schedule_in", -1.0, ValueError, "schedule_in: delay must be >= 0"),
        ("schedule_in", math.nan, ValueError, "schedule_in: delay must not be NaN"),
        ("schedule_at", math.nan, ValueError, "schedule_at: atime must not be NaN"),
        ("schedule_every", math.nan, ValueError, "schedule_every: period must not be NaN"),
        ("schedule_every", 0, ValueError, "schedule_every: period must not be 0"),
    ],
)
def test_rescheduling_an_event_with_bad_times_raises(
    loose_thread, call, value, error, message
) -> None:
    e = loose_thread.schedule_imm(Recorder())
    with pytest.raises(error, match=f"^{message}"):
        getattr(e, call)(value)


def test_dedicated_thread_refuses_events() -> None:
    t = EThread(DEDICATED)
    assert t.evfd is None and t.tail_cb is None  # a dedicated thread owns no fds
    with pytest.raises(RuntimeError, match="dedicated thread and runs no loop"):
        t.schedule_imm(Recorder())
    t.join()


def test_every_pass_events_run_often_on_an_idle_thread(processor, fake_clock) -> None:
    # The clock never moves: no timer ends a wait. An idle thread's poll step would sleep
    # MAX_IDLE_WAIT_MS (here, an hour); with an every-pass event it waits at most
    # EVERY_PASS_MAX_WAIT_MS, so the event runs ten times within the test's bound.
    one = processor(1, clock=fake_clock, settled=False).threads()[0]
    tail = install_counting_tail(one, hour_long=True)
    count = [0]
    enough = threading.Event()

    def tick(event: int, e: object) -> None:
        count[0] += 1
        if count[0] >= 10:
            enough.set()

    ev = one.schedule_every(Continuation(handler=tick), -1)
    assert enough.wait(WAIT)
    timeouts = run_on(one, lambda: list(tail.timeouts))
    ev.cancel()
    assert max(timeouts[-10:]) <= EVERY_PASS_MAX_WAIT_MS, timeouts


# ----------------------------------------------------------------- found by review


@pytest.mark.parametrize("how", ["thread.schedule_at", "thread.schedule_in", "event.schedule_in"])
def test_a_deadline_too_large_for_a_float_is_never_and_the_loop_does_not_spin(
    processor, fake_clock, caplog, how: str
) -> None:
    # 10**400 was stored as an int; every pass then failed converting it (OverflowError
    # logged ~100,000 times a second, a core busy) before its poll step.
    one = processor(1, clock=fake_clock).threads()[0]
    rec = Recorder()
    if how == "thread.schedule_at":
        e = one.schedule_at(rec, 10**400)
    elif how == "thread.schedule_in":
        e = one.schedule_in(rec, 10**400)
    else:
        e = one.schedule_in(rec, 5.0)
        e.schedule_in(10**400)
    assert e.timeout_at == math.inf
    soon = Recorder()
    one.schedule_in(soon, 0.05)
    with caplog.at_level(logging.ERROR):
        fake_clock.advance(0.05)
        assert soon.count == 1
        for _ in range(5):  # more passes with the far deadline still queued
            fake_clock.advance(1.0)
    assert "error in the event loop pass" not in caplog.text
    assert rec.count == 0
    e.cancel()


@pytest.mark.parametrize("how", ["reschedule", "cancel-reschedule", "schedule_imm-twice"])
def test_an_event_rescheduled_from_another_thread_runs_once(
    processor, fake_clock, how: str
) -> None:
    # The cross-thread queue held the bare event: each (re)schedule put one more copy there,
    # and each copy ran.
    one = processor(1, clock=fake_clock).threads()[0]
    rec = Recorder()
    start = fake_clock.now
    e = one.schedule_in(rec, 0.5)
    if how == "reschedule":
        e.schedule_in(0.125)
    elif how == "cancel-reschedule":
        e.cancel()
        e.schedule_in(0.125)
    else:
        e.schedule_imm()
        e.schedule_imm()
        run_on(one, lambda: None)
        assert rec.count == 1  # before the clock moved
    fake_clock.advance(0.125)
    assert rec.count == 1
    fake_clock.advance(0.75)  # past the first deadline too
    assert rec.count == 1
    assert rec.calls[0][3] == (start if how == "schedule_imm-twice" else start + 0.125)


def test_cancel_on_an_event_thread_does_not_wait_for_a_mutex_held_elsewhere(
    processor, fake_clock
) -> None:
    # cancel() took the event's mutex with a blocking lock: a handler cancelling an event
    # whose mutex another thread held stalled its event thread (and two event threads
    # cancelling each other's events deadlocked).
    one = processor(1, clock=fake_clock).threads()[0]
    m = ProxyMutex()
    target = Recorder()
    target.mutex = m
    victim = one.schedule_in(target, 0.3)
    holder = HeldElsewhere(m)
    # Who held the mutex when cancel() returned: still the holder, who lets go only when
    # the test says so, if cancel() did not wait for it.
    held_by: list[int | None] = []

    def cancel_it(event: int, e: Event) -> None:
        victim.cancel()
        held_by.append(m.thread_holding)

    try:
        one.schedule_imm(Continuation(handler=cancel_it))
        run_on(one, lambda: None)
        assert held_by == [holder.thread.ident]
        assert victim.cancelled
    finally:
        holder.release()
    fake_clock.advance(0.5)  # past the victim's deadline
    assert target.count == 0  # cancelled: never delivered, before or after the release


def test_events_scheduled_onto_a_stopped_thread_are_dropped_not_queued(one) -> None:
    one.stop()
    assert one.join(WAIT)
    for _ in range(100):
        one.schedule_imm(Continuation(handler=noop))
    assert one._ext == []


@pytest.mark.parametrize(
    ("timeout", "exc"),
    [(True, TypeError), ("1", TypeError), (None, TypeError), (float("nan"), ValueError),
     (-2, ValueError)],
)  # fmt: skip
def test_mutex_lock_rejects_a_bad_timeout(timeout: Any, exc: type) -> None:
    with pytest.raises(exc, match="ProxyMutex.lock: timeout"):
        ProxyMutex().lock(timeout)


@pytest.mark.parametrize("timeout", [math.inf, 1e300, 10**400], ids=["inf", "1e300", "10**400"])
def test_mutex_lock_with_a_timeout_beyond_what_the_os_waits_means_forever(timeout: Any) -> None:
    m = ProxyMutex()
    assert m.lock(timeout)
    m.unlock()


def test_schedule_takes_any_truthy_signal(loose_thread) -> None:
    """``schedule(e, signal)``: ``signal`` is tested for truth (an int 1 as much as True),
    compiled as interpreted: each such schedule writes the eventfd."""
    before = loose_thread.signal_count
    loose_thread.schedule(Event(Continuation(handler=noop)), 1)
    loose_thread.schedule(Event(Continuation(handler=noop)), 1)
    loose_thread.schedule(Event(Continuation(handler=noop)), 0)  # not the first: no write
    assert loose_thread.signal_count == before + 2
