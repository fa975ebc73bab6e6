"""ProxyMutex, Continuation and Action on their own (no event loop)."""

from __future__ import annotations

import ast
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ats_cffi
from ats_cffi.eventsystem import Action, Continuation, Event, ProxyMutex, current, ethread
from ats_cffi.eventsystem.continuation import check_continuation, deliver
from tests.conftest import wait_until, yield_to_other_threads
from tests.eventsystem.conftest import WAIT, HeldElsewhere


@pytest.fixture
def held() -> Iterator[HeldElsewhere]:
    h = HeldElsewhere(ProxyMutex())
    yield h
    h.release()


class OtherThread:
    """One helper thread that runs the calls it is given, in order (``call`` waits for the
    result, bounded: a call that blocks fails the test)."""

    def __init__(self) -> None:
        self._calls: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="other")
        self._thread.start()
        self.ident = self._thread.ident

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, box = item
            try:
                box.put((True, fn()))
            except BaseException as exc:
                box.put((False, exc))

    def call(self, fn: Callable[[], Any]) -> Any:
        box: queue.Queue[Any] = queue.Queue(1)
        self._calls.put((fn, box))
        ok, value = box.get(timeout=WAIT)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join(WAIT)


@pytest.fixture
def other() -> Iterator[OtherThread]:
    t = OtherThread()
    yield t
    t.close()


# ------------------------------------------------------------------------- ProxyMutex


def test_mutex_is_reentrant_and_tracks_holder_and_depth() -> None:
    m = ProxyMutex()
    assert m.thread_holding is None and m.nthread_holding == 0 and not m.held_by_me()
    assert m.lock()
    assert m.try_lock()
    with m:
        assert m.nthread_holding == 3
        assert m.thread_holding == threading.get_ident() and m.held_by_me()
    m.unlock()
    assert m.held_by_me() and m.nthread_holding == 1
    m.unlock()
    assert m.thread_holding is None and m.nthread_holding == 0 and not m.held_by_me()


def test_try_lock_never_blocks_while_another_thread_holds_the_mutex(held) -> None:
    # The holder lets go only when the test releases it (or after WAIT): a try_lock that
    # waited for the mutex would have hung there, then taken it.
    m = held.mutex
    results = [m.try_lock() for _ in range(100)]
    assert results == [False] * 100
    assert m.thread_holding == held.thread.ident and m.nthread_holding == 1
    assert not m.held_by_me()


def test_timed_lock_gives_up_while_another_thread_holds_the_mutex(held) -> None:
    assert held.mutex.lock(timeout=0.01) is False
    assert not held.mutex.held_by_me()


def test_mutex_freed_by_one_thread_can_be_taken_by_another() -> None:
    h = HeldElsewhere(ProxyMutex())
    assert not h.mutex.try_lock()
    h.release()
    assert h.mutex.try_lock() and h.mutex.held_by_me()
    h.mutex.unlock()


def test_unlock_by_a_thread_that_never_locked_raises_runtime_error() -> None:
    m = ProxyMutex()
    with pytest.raises(RuntimeError, match="does not hold"):
        m.unlock()
    assert m.nthread_holding == 0


def test_unlock_by_a_non_holder_raises_and_leaves_the_holder_owning_it(held) -> None:
    with pytest.raises(RuntimeError, match="ProxyMutex.unlock"):
        held.mutex.unlock()
    assert held.mutex.thread_holding == held.thread.ident and held.mutex.nthread_holding == 1
    assert not held.mutex.try_lock()


def test_with_block_releases_the_mutex_when_the_body_raises() -> None:
    m = ProxyMutex()
    with pytest.raises(ZeroDivisionError), m:
        1 / 0  # noqa: B018
    assert m.thread_holding is None and m.nthread_holding == 0


def test_holder_and_depth_are_the_locks_own_whatever_way_it_was_taken(held) -> None:
    # Holder and depth agree after any mix of lock, try_lock, with and unlock.
    m = ProxyMutex()
    me = threading.get_ident()
    assert repr(m) == "<ProxyMutex holder=None depth=0>"
    assert m.try_lock() and m.lock(timeout=0.1)
    with m:
        assert (m.thread_holding, m.nthread_holding) == (me, 3)
        assert repr(m) == f"<ProxyMutex holder={me} depth=3>"
    m.unlock()
    assert (m.thread_holding, m.nthread_holding, m.held_by_me()) == (me, 1, True)
    m.unlock()
    assert (m.thread_holding, m.nthread_holding, m.held_by_me()) == (None, 0, False)
    # Held by another thread: seen from here, not held by me.
    assert repr(held.mutex) == f"<ProxyMutex holder={held.thread.ident} depth=1>"
    assert not held.mutex.held_by_me()


def test_a_failed_unlock_leaves_a_reentrant_holders_depth_alone() -> None:
    m = ProxyMutex()
    assert m.try_lock() and m.try_lock()
    seen: list[BaseException] = []

    def other() -> None:
        try:
            m.unlock()
        except RuntimeError as exc:
            seen.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(WAIT)
    assert len(seen) == 1 and "does not hold" in str(seen[0])
    assert m.nthread_holding == 2
    m.unlock()
    m.unlock()
    assert m.thread_holding is None


def test_a_subclass_overriding_try_lock_and_unlock_is_used() -> None:
    calls: list[str] = []

    class Traced(ProxyMutex):
        def try_lock(self) -> bool:
            calls.append("try_lock")
            return super().try_lock()

        def unlock(self) -> None:
            calls.append("unlock")
            super().unlock()

        def held_by_me(self) -> bool:
            calls.append("held_by_me")
            return super().held_by_me()

    m = Traced()
    assert m.try_lock() and m.held_by_me()
    m.unlock()
    with m:
        pass
    assert calls == ["try_lock", "held_by_me", "unlock", "unlock"]
    assert m.thread_holding is None


def test_a_thread_waiting_in_lock_gets_the_mutex_when_the_holder_frees_it() -> None:
    h = HeldElsewhere(ProxyMutex())
    got: list[bool] = []
    entered: list[float] = []

    def waiter(timeout: float) -> None:
        entered.append(timeout)
        ok = h.mutex.lock(timeout=timeout)
        got.append(ok)
        if ok:
            assert h.mutex.held_by_me() and h.mutex.nthread_holding == 1
            h.mutex.unlock()

    threads = [threading.Thread(target=waiter, args=(t,)) for t in (WAIT, -1, WAIT)]
    for t in threads:
        t.start()
    wait_until(lambda: len(entered) == 3, what="the three waiters to call lock()")
    assert got == [] and h.mutex.thread_holding == h.thread.ident
    h.release()
    for t in threads:
        t.join(WAIT)
    # Each got it in turn: none waited for its timeout (it would have returned False).
    assert got == [True] * 3
    assert h.mutex.thread_holding is None and h.mutex.nthread_holding == 0


def test_a_timed_out_waiter_leaves_the_mutex_usable(held) -> None:
    m = held.mutex
    assert m.lock(timeout=0.02) is False and m.lock(timeout=0) is False
    held.release()
    assert m.lock(timeout=WAIT) and m.nthread_holding == 1
    m.unlock()
    assert m.thread_holding is None


def test_threads_mixing_every_way_to_take_the_mutex_never_hold_it_together() -> None:
    # Each critical section reads, yields (running bytecode elsewhere) and writes back: two
    # holders at once would lose increments or see another holder.
    m = ProxyMutex()
    state = {"count": 0, "inside": 0}
    errors: list[str] = []
    rounds = 400

    def section() -> None:
        state["inside"] += 1
        if state["inside"] != 1 or not m.held_by_me():
            errors.append(f"{state['inside']} holders")
        v = state["count"]
        yield_to_other_threads()
        state["count"] = v + 1
        state["inside"] -= 1

    def worker(way: int) -> None:
        for _ in range(rounds):
            if way == 0:
                try:
                    wait_until(m.try_lock, what="try_lock to take the mutex", interval=0)
                except AssertionError:
                    errors.append("try_lock starved")
                    return
                try:
                    section()
                finally:
                    m.unlock()
            elif way == 1:
                with m, m:  # re-entrant
                    section()
            else:
                if not m.lock(timeout=WAIT):
                    errors.append("lock timed out")
                    return
                try:
                    section()
                finally:
                    m.unlock()

    threads = [threading.Thread(target=worker, args=(i % 3,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert state["count"] == 6 * rounds
    assert m.thread_holding is None and m.nthread_holding == 0


def test_every_thread_sees_one_holder_and_depth_while_another_holds_it_reentrantly(
    other,
) -> None:
    # Taken three ways by the other thread; freed one level at a time. At every depth the
    # holder's fields, its repr and held_by_me agree, seen from here and from the holder,
    # and the mutex stays taken: neither try_lock, a timed lock nor unlock gets through.
    m = ProxyMutex()
    assert other.call(m.lock) and other.call(m.try_lock)
    other.call(m.__enter__)
    ident = other.ident
    for depth in (3, 2, 1):
        view = (ident, depth, f"<ProxyMutex holder={ident} depth={depth}>")
        assert (m.thread_holding, m.nthread_holding, repr(m)) == view
        assert other.call(lambda: (m.thread_holding, m.nthread_holding, repr(m))) == view
        assert other.call(m.held_by_me) and not m.held_by_me()
        assert not m.try_lock() and m.lock(timeout=0.01) is False
        with pytest.raises(RuntimeError, match="does not hold"):
            m.unlock()
        assert (m.thread_holding, m.nthread_holding) == (ident, depth)
        other.call(m.unlock)
    free = (None, 0, "<ProxyMutex holder=None depth=0>")
    assert (m.thread_holding, m.nthread_holding, repr(m)) == free
    assert other.call(lambda: (m.thread_holding, m.nthread_holding, repr(m))) == free
    assert not other.call(m.held_by_me)
    with pytest.raises(RuntimeError, match="does not hold"):
        other.call(m.unlock)
    assert m.try_lock() and m.thread_holding == threading.get_ident()
    m.unlock()


def test_timed_lock_on_another_thread_times_out_until_the_last_level_is_freed(other) -> None:
    m = ProxyMutex()
    assert m.lock() and m.try_lock()
    assert other.call(lambda: m.lock(timeout=0.01)) is False
    m.unlock()  # depth 1: still held
    assert other.call(lambda: m.lock(timeout=0.01)) is False
    assert other.call(lambda: m.lock(timeout=0)) is False and not other.call(m.try_lock)
    assert (m.thread_holding, m.nthread_holding) == (threading.get_ident(), 1)
    m.unlock()
    assert other.call(lambda: m.lock(timeout=WAIT)) is True
    assert (m.thread_holding, m.nthread_holding) == (other.ident, 1)
    assert not m.try_lock()
    assert other.call(m.try_lock) and m.nthread_holding == 2
    other.call(m.unlock)
    other.call(m.unlock)
    assert m.thread_holding is None and m.try_lock()
    m.unlock()


def test_a_mutex_handed_between_threads_many_times_keeps_holder_and_depth_true(
    other,
) -> None:
    # The first level takes the mutex and the last frees it, whoever held it before; a
    # layout that took or freed it at another level would block or let both in here.
    m = ProxyMutex()
    me = threading.get_ident()
    for _ in range(50):
        assert m.try_lock() and m.try_lock()
        assert not other.call(m.try_lock)
        m.unlock()
        m.unlock()
        assert other.call(m.try_lock) and other.call(lambda: m.lock(timeout=WAIT))
        assert (m.thread_holding, m.nthread_holding) == (other.ident, 2)
        assert not m.try_lock() and m.thread_holding != me
        other.call(m.unlock)
        other.call(m.unlock)
    assert m.thread_holding is None and m.nthread_holding == 0


# ----------------------------------------------------------------------- Continuation


def test_handle_event_calls_the_current_handler_and_returns_its_value() -> None:
    seen = []
    c = Continuation(handler=lambda ev, data: seen.append(("first", ev, data)) or 7)
    assert c.handle_event(1, "x") == 7
    c.set_handler(lambda ev, data: seen.append(("second", ev, data)) or 8)
    assert c.handle_event(2, "y") == 8
    assert seen == [("first", 1, "x"), ("second", 2, "y")]


def test_set_handler_accepts_a_bound_method() -> None:
    class Counter(Continuation):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0
            self.set_handler(self.state_count)

        def state_count(self, event: int, data: object) -> int:
            self.n += event
            return 0

    c = Counter()
    c.handle_event(3)
    c.handle_event(4)
    assert c.n == 7


def test_set_handler_with_a_non_callable_raises_type_error_naming_the_call() -> None:
    c = Continuation()
    with pytest.raises(TypeError, match="set_handler: handler must be callable, not int"):
        c.set_handler(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="set_handler"):
        Continuation(handler="not a function")  # type: ignore[arg-type]


def test_handle_event_without_a_handler_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="no handler set"):
        Continuation().handle_event(1)


def test_deliver_calls_the_handler_or_the_subclass_override_of_handle_event() -> None:
    got: list[tuple[str, int, object]] = []

    class Plain(Continuation):  # keeps Continuation.handle_event: deliver calls the handler
        def __init__(self) -> None:
            super().__init__(handler=lambda event, data: got.append(("handler", event, data)))

    class Overriding(Continuation):
        def __init__(self) -> None:
            super().__init__(handler=lambda event, data: got.append(("handler", event, data)))

        def handle_event(self, event: int = 0, data: object = None) -> str:
            got.append(("override", event, data))
            return "overridden"

    plain, overriding = Plain(), Overriding()
    assert plain.calls_handler and not overriding.calls_handler
    assert Continuation().calls_handler
    deliver(plain, 1, "a")
    assert deliver(overriding, 2, "b") == "overridden"
    assert got == [("handler", 1, "a"), ("override", 2, "b")]
    plain.set_handler(lambda event, data: event * 10)  # the handler of the moment
    assert deliver(plain, 3, None) == 30
    with pytest.raises(RuntimeError, match="no handler set"):
        deliver(Continuation(), 4, None)


def test_whether_a_class_keeps_handle_event_is_asked_once_per_class_in_a_bounded_cache() -> None:
    from ats_cffi.eventsystem import continuation as cm

    # Classes made on the fly (a factory's, per call) do not pile up in the cache, and each
    # instance still gets its own class's answer, also for a class seen again after a clear.
    made = []
    for i in range(3 * cm._KEEPS_HANDLE_EVENT_MAX):
        if i % 2:
            cls = type(f"Over{i}", (Continuation,), {"handle_event": lambda self, e=0, d=None: e})
        else:
            cls = type(f"Plain{i}", (Continuation,), {})
        made.append(cls)
        assert cls().calls_handler == (i % 2 == 0)
        assert len(cm._keeps_handle_event) <= cm._KEEPS_HANDLE_EVENT_MAX
    assert made[0]().calls_handler and not made[1]().calls_handler


def test_continuation_mutex_must_be_a_proxy_mutex() -> None:
    with pytest.raises(TypeError, match="mutex must be a ProxyMutex, not RLock"):
        Continuation(mutex=threading.RLock())  # type: ignore[arg-type]


def test_check_continuation_gives_a_mutex_only_to_a_continuation_without_one() -> None:
    bare = Continuation()
    assert check_continuation("x", bare) is bare and isinstance(bare.mutex, ProxyMutex)
    mine = ProxyMutex()
    owned = Continuation(mutex=mine)
    check_continuation("x", owned)
    assert owned.mutex is mine


def test_check_continuation_rejects_other_objects_naming_the_call() -> None:
    with pytest.raises(TypeError, match="schedule_imm: cont must be a Continuation, not function"):
        check_continuation("schedule_imm", lambda ev, data: None)


# ----------------------------------------------------------------------------- Action


def test_cancel_of_an_action_without_continuation_just_marks_it() -> None:
    a = Action()
    a.cancel()
    a.cancel()
    assert a.cancelled


def test_cancel_waits_for_the_continuation_mutex_held_by_another_thread(held) -> None:
    a = Action(Continuation(mutex=held.mutex))
    returned = threading.Event()
    canceller = threading.Thread(target=lambda: (a.cancel(), returned.set()))
    canceller.start()
    try:
        # cancel() must not return while a delivery (the holder) may still be running. The
        # canceller blocks in the kernel (the mutex's futex): only a real wait can show that
        # it stays there, so this one is bounded and short.
        assert not returned.wait(0.05)
        assert not a.cancelled
    finally:
        held.release()
        canceller.join(WAIT)
    assert returned.is_set() and a.cancelled


def test_cancel_from_the_mutex_holder_does_not_deadlock() -> None:
    c = Continuation(mutex=ProxyMutex())
    a = Action(c)
    with c.mutex:
        a.cancel()  # re-entrant: the handler cancelling its own action
        assert c.mutex.nthread_holding == 1
    assert a.cancelled and c.mutex.thread_holding is None


def test_event_never_scheduled_cannot_be_rescheduled() -> None:
    e = Event(Continuation(handler=lambda ev, data: None))
    with pytest.raises(RuntimeError, match="never scheduled"):
        e.schedule_in(1.0)
    with pytest.raises(RuntimeError, match="never scheduled"):
        e.schedule_imm()


def test_event_module_imports_ethread_only_for_type_hints() -> None:
    # ethread imports event; what Action.cancel asks (the current thread) lives in
    # current.py, so no import goes back at run time, not even inside a function.
    # The source, not ``event.__file__``: compiled, that names the extension module.
    source = Path(ats_cffi.__file__).parent / "eventsystem" / "event.py"
    with open(source, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    hints_only = {
        id(node)
        for stmt in tree.body
        if isinstance(stmt, ast.If) and ast.unparse(stmt.test) == "TYPE_CHECKING"
        for node in ast.walk(stmt)
    }
    run_time = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and id(node) not in hints_only
    ]
    assert "ats_cffi.eventsystem.ethread" not in run_time
    assert "ats_cffi.eventsystem.current" in run_time
    # The old import path of the current-thread helpers still works.
    assert ethread.this_ethread is current.this_ethread
    assert ethread.on_event_thread is current.on_event_thread
