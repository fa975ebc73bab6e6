"""EventProcessor: the thread groups, per-thread slots and the scheduling front door."""

from __future__ import annotations

import inspect
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from ats_cffi.eventsystem.codes import EVENT_IMMEDIATE, EVENT_INTERVAL
from ats_cffi.eventsystem.continuation import Continuation, check_continuation
from ats_cffi.eventsystem.ethread import (
    DEDICATED,
    REGULAR,
    Clock,
    EThread,
    check_clock,
    this_ethread,
)
from ats_cffi.eventsystem.event import Event

#: The regular event threads. As in ATS, the net threads are the same group.
ET_CALL = 0
ET_NET = ET_CALL

MAX_EVENT_TYPES = 16
#: Most regular event threads of all types together (ATS's MAX_EVENT_THREADS).
MAX_EVENT_THREADS = 4096
#: Most regular event threads of one type (ATS's MAX_THREADS_IN_EACH_TYPE).
MAX_THREADS_IN_EACH_TYPE = 3072

SlotFactory = Callable[[EThread], Any]
SpawnHook = Callable[[EThread], None]


class ThreadGroup:
    """The threads of one event type, assigned round-robin."""

    def __init__(self, name: str, etype: int) -> None:
        self.name = name
        self.etype = etype
        self.threads: list[EThread] = []
        self.spawn_hooks: list[SpawnHook] = []
        self._next = itertools.count()

    def assign(self, call: str = "assign_thread") -> EThread:
        threads = self.threads
        if not threads:
            raise RuntimeError(f"{call}: no {self.name} threads are running")
        return threads[next(self._next) % len(threads)]


def _check_thread_callable(call: str, name: str, fn: Any) -> None:
    """``TypeError`` naming ``call`` and ``name`` unless ``fn`` can be called as
    ``fn(thread)`` (when its signature can be read)."""
    if not callable(fn):
        raise TypeError(f"{call}: {name} must be callable, not {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins: nothing to check
        return
    try:
        sig.bind(None)
    except TypeError as exc:
        raise TypeError(f"{call}: {name} must accept one argument (the thread): {exc}") from None


def check_join_timeout(call: str, timeout: Any, positive: bool = False) -> float | None:
    """A timeout for waiting on threads (every shutdown and stop takes one): seconds >= 0
    (> 0 with ``positive``), or None, -1 or inf (or more than the OS can wait) for no
    limit, as ``ProxyMutex.lock``; None stands for no limit in the result.
    ``TypeError``/``ValueError`` naming ``call`` otherwise."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"{call}: timeout must be a number or None, not {type(timeout).__name__}")
    if timeout == -1:
        return None
    if not (timeout > 0 if positive else timeout >= 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{call}: timeout must be {bound}, -1 or None, got {timeout}")
    if timeout >= threading.TIMEOUT_MAX or math.isinf(timeout):
        return None
    return float(timeout)


def run_on_threads(
    threads: list[EThread],
    fn: Callable[[EThread], None],
    call: str,
    timeout: float | None = 10.0,
) -> None:
    """Run ``fn(thread)`` on each of ``threads`` (as an immediate event) and wait until all
    ran; re-raise the first exception. The threads do not wait for one another.

    ``RuntimeError`` when called on one of ``threads`` (it would wait for itself) or when
    they do not all answer within ``timeout`` seconds (None: no limit).
    """
    me = this_ethread()
    if me is not None and me in threads:
        raise RuntimeError(f"{call}: called on a thread it waits for")
    dones = [threading.Event() for _ in threads]
    errors: list[BaseException] = []

    def runner(done: threading.Event) -> Callable[[int, Event], None]:
        def run(event: int, e: Event) -> None:
            try:
                fn(e.ethread)  # type: ignore[arg-type]
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        return run

    for t, done in zip(threads, dones):
        t.schedule_imm_signal(Continuation(handler=runner(done)))
    for done in dones:
        if not done.wait(timeout):
            raise RuntimeError(f"{call}: a thread did not answer within {timeout} s")
    if errors:
        raise errors[0]


class EventProcessor:
    """ATS's eventProcessor: owns the event threads.

    Order of use: ``register_event_type``/``allocate``/``schedule_spawn`` before
    ``start`` (or ``spawn_event_threads``); ``shutdown`` stops and joins every thread,
    closes every epoll fd and eventfd, and returns the processor to its fresh state.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        """``TypeError``/``ValueError`` if ``clock`` is not callable or reads NaN."""
        self.clock = check_clock("EventProcessor", clock)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.groups: list[ThreadGroup] = [ThreadGroup("ET_NET", ET_CALL)]
        self._type_names = {"ET_CALL": ET_CALL, "ET_NET": ET_CALL}
        self._slot_factories: list[SlotFactory | None] = []
        self.dedicated: list[EThread] = []
        self.started = False

    # ---------------------------------------------------------------- configuration

    def register_event_type(self, name: str) -> int:
        """A new event type (thread group) named ``name``; the same id for a known name."""
        if not isinstance(name, str):
            raise TypeError(f"register_event_type: name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("register_event_type: name must not be empty")
        with self._lock:
            if name in self._type_names:
                return self._type_names[name]
            if len(self.groups) >= MAX_EVENT_TYPES:
                raise ValueError(f"register_event_type: at most {MAX_EVENT_TYPES} event types")
            etype = len(self.groups)
            self.groups.append(ThreadGroup(name, etype))
            self._type_names[name] = etype
            return etype

    def allocate(self, factory: SlotFactory | None = None) -> int:
        """Reserve a per-thread slot; ``factory(thread)`` fills it on each thread at its start.

        Returns the slot's offset for ``EThread.get_slot``. Only before ``start``.
        """
        if factory is not None:
            _check_thread_callable("allocate", "factory", factory)
        with self._lock:
            if self.started:
                raise RuntimeError("allocate: slots must be allocated before start()")
            self._slot_factories.append(factory)
            return len(self._slot_factories) - 1

    def schedule_spawn(self, hook: SpawnHook, etype: int = ET_CALL) -> None:
        """Run ``hook(thread)`` on every thread of ``etype`` when it starts (on that thread).

        Threads already running get it as an immediate event; returns once they ran it. If it
        raises on one of them, it is not kept for later threads and the error is re-raised.
        """
        if not callable(hook):
            raise TypeError(f"schedule_spawn: hook must be callable, not {type(hook).__name__}")
        group = self._group("schedule_spawn", etype)
        _check_thread_callable("schedule_spawn", "hook", hook)  # (its arity, once etype is known)
        me = this_ethread()
        if me is not None and me in group.threads:
            raise RuntimeError("schedule_spawn: called on a thread of the group it waits for")
        group.spawn_hooks.append(hook)
        running = [t for t in group.threads if t.is_alive]
        if running:
            try:
                run_on_threads(running, hook, "schedule_spawn")
            except BaseException:
                # A hook that fails would fail every later thread's start as well.
                group.spawn_hooks = [h for h in group.spawn_hooks if h is not hook]
                raise

    def _group(self, call: str, etype: int) -> ThreadGroup:
        if type(etype) is not int:
            raise TypeError(f"{call}: etype must be an int, not {type(etype).__name__}")
        if not 0 <= etype < len(self.groups):
            raise ValueError(f"{call}: unknown event type {etype}")
        return self.groups[etype]

    # ---------------------------------------------------------------- threads

    def _init_thread(self, t: EThread) -> None:
        t.slots = [f(t) if f is not None else None for f in self._slot_factories]
        for hook in self.groups[t.etype].spawn_hooks:
            hook(t)

    def spawn_event_threads(self, etype: int, n_threads: int, name: str | None = None) -> None:
        """Start ``n_threads`` regular threads of ``etype``; returns once each is initialised.

        ``ValueError`` beyond MAX_THREADS_IN_EACH_TYPE threads of one type or
        MAX_EVENT_THREADS in all (checked before any thread starts). If one fails to start,
        the threads this call started are stopped before the error is raised.
        """
        call = "spawn_event_threads"
        group = self._group(call, etype)
        if type(n_threads) is not int:
            raise TypeError(f"{call}: n_threads must be an int, not {type(n_threads).__name__}")
        if n_threads <= 0:
            raise ValueError(f"{call}: n_threads must be > 0, got {n_threads}")
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"{call}: name must be a str or None, not {type(name).__name__}")
            if not name:
                raise ValueError(f"{call}: name must not be empty")
        in_group = len(group.threads)
        if n_threads > MAX_THREADS_IN_EACH_TYPE - in_group:
            raise ValueError(
                f"{call}: n_threads must be at most {MAX_THREADS_IN_EACH_TYPE - in_group} "
                f"({in_group} of at most {MAX_THREADS_IN_EACH_TYPE} threads of type {etype} "
                f"exist), got {n_threads}"
            )
        total = sum(len(g.threads) for g in self.groups)
        if n_threads > MAX_EVENT_THREADS - total:
            raise ValueError(
                f"{call}: n_threads must be at most {MAX_EVENT_THREADS - total} ({total} of "
                f"at most {MAX_EVENT_THREADS} event threads exist), got {n_threads}"
            )
        with self._lock:
            was_started, self.started = self.started, True
        mine: list[EThread] = []
        try:
            for i in range(in_group, in_group + n_threads):
                t = EThread(REGULAR, etype, i, self.clock, f"[{name or group.name} {i}]")
                try:
                    t.start(self._init_thread)
                except BaseException:
                    t.join()
                    raise
                group.threads.append(t)
                mine.append(t)
        except BaseException:
            for t in mine:
                t.stop()
            for t in mine:
                t.join()
            group.threads[:] = [t for t in group.threads if t not in mine]
            with self._lock:
                if not was_started and not any(g.threads for g in self.groups):
                    self.started = False
            raise

    def start(self, n_threads: int = 1) -> None:
        """Start the ``ET_CALL``/``ET_NET`` threads (ATS's ``eventProcessor.start``)."""
        if self.groups[ET_CALL].threads:
            raise RuntimeError("start: the event processor is already running")
        self.spawn_event_threads(ET_CALL, n_threads)

    def spawn_thread(self, cont: Continuation, name: str) -> EThread:
        """A dedicated thread that runs ``cont`` once with ``EVENT_IMMEDIATE`` (e.g. a blocking
        accept loop). It holds no mutex while the handler runs; the handler returns to end it.

        ``TypeError``/``ValueError`` unless ``name`` is a non-empty str."""
        check_continuation("spawn_thread", cont, True)
        if not isinstance(name, str):
            raise TypeError(f"spawn_thread: name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("spawn_thread: name must not be empty")
        t = EThread(DEDICATED, -1, len(self.dedicated), self.clock, name)
        e = Event(cont, EVENT_IMMEDIATE)
        self.dedicated.append(t)
        t.start(oneevent=e)
        return t

    def assign_thread(self, etype: int = ET_CALL) -> EThread:
        """The next thread of ``etype``, round-robin."""
        return self._thread_for("assign_thread", etype)

    def _thread_for(self, call: str, etype: int) -> EThread:
        """``assign_thread`` for ``call``, whose name its errors carry."""
        return self._group(call, etype).assign(call)

    def threads(self, etype: int = ET_CALL) -> list[EThread]:
        return list(self._group("threads", etype).threads)

    def n_threads_for_type(self, etype: int = ET_CALL) -> int:
        return len(self._group("n_threads_for_type", etype).threads)

    # ---------------------------------------------------------------- scheduling

    def schedule_imm(
        self, cont: Continuation, etype: int = ET_CALL, callback_event: int = EVENT_IMMEDIATE,
        cookie: Any = None,
    ) -> Event:  # fmt: skip
        return self._thread_for("schedule_imm", etype).schedule_imm(cont, callback_event, cookie)

    def schedule_imm_signal(
        self, cont: Continuation, etype: int = ET_CALL, callback_event: int = EVENT_IMMEDIATE,
        cookie: Any = None,
    ) -> Event:  # fmt: skip
        return self._thread_for("schedule_imm_signal", etype).schedule_imm_signal(
            cont, callback_event, cookie
        )

    def schedule_in(
        self, cont: Continuation, delay: float, etype: int = ET_CALL,
        callback_event: int = EVENT_INTERVAL, cookie: Any = None,
    ) -> Event:  # fmt: skip
        return self._thread_for("schedule_in", etype).schedule_in(
            cont, delay, callback_event, cookie
        )

    def schedule_at(
        self, cont: Continuation, atime: float, etype: int = ET_CALL,
        callback_event: int = EVENT_INTERVAL, cookie: Any = None,
    ) -> Event:  # fmt: skip
        return self._thread_for("schedule_at", etype).schedule_at(
            cont, atime, callback_event, cookie
        )

    def schedule_every(
        self, cont: Continuation, period: float, etype: int = ET_CALL,
        callback_event: int = EVENT_INTERVAL, cookie: Any = None,
    ) -> Event:  # fmt: skip
        return self._thread_for("schedule_every", etype).schedule_every(
            cont, period, callback_event, cookie
        )

    # ---------------------------------------------------------------- shutdown

    def shutdown(self, timeout: float | None = 5.0) -> None:
        """Stop and join every thread, close their fds, and reset to a fresh processor.

        ``timeout`` is per thread, in seconds (None, -1 or inf: no limit); it is checked
        before anything stops. Raises ``RuntimeError`` naming the threads that did not end
        within it.
        """
        timeout = check_join_timeout("shutdown", timeout)
        me = this_ethread()
        if me is not None and me.tt == REGULAR:
            raise RuntimeError("shutdown: called on an event thread, which cannot join itself")
        regular = [t for g in self.groups for t in g.threads]
        for t in regular:
            t.stop()
        stuck = [t for t in regular + self.dedicated if not t.join(timeout)]
        with self._lock:
            self._reset()
        if stuck:
            raise RuntimeError(f"shutdown: threads still running: {stuck}")


#: The process-wide event processor (ATS's ``eventProcessor``).
event_processor = EventProcessor()
