"""The asyncio loop's most called methods, compiled (``_compiled.py``).

asyncio's ``BaseEventLoop`` is Python: every ``call_soon`` (each step of each Task, each
done Future's callbacks), every ``get_debug`` (asked by each new Future and Task and
Handle) and every ``create_task`` runs two or three interpreted frames. A uvicorn request
makes about a dozen such calls, where uvloop runs them in C (profile of
perf/uvicorn_hello.py under wrk: about 25 interpreted loop calls per request).

``LoopCore`` holds the same code for the common case, compiled; ``Loop.__init__``
(loop.py) binds its methods as the loop's own instance attributes, so that
``loop.call_soon(...)`` finds them first and no interpreted frame runs. A subclass that
overrides one of them keeps its own. Anything else — a closed loop, debug mode, a task
factory — goes to asyncio's own method, unchanged: the fast path is asyncio's behaviour
for a running, non-debug loop, not a new one.
"""

from __future__ import annotations

from asyncio import base_events, events, tasks
from typing import Any, Final

_Handle: Final = events.Handle
_Task: Final = tasks.Task
_call_soon: Final = base_events.BaseEventLoop.call_soon
_create_task: Final = base_events.BaseEventLoop.create_task


class LoopCore:
    """``get_debug``, ``call_soon`` and ``create_task`` of ``loop`` (an asyncio
    ``BaseEventLoop``), compiled; see the module doc."""

    __slots__ = ("loop", "ready")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        #: asyncio's ready queue: made once in ``BaseEventLoop.__init__``, never replaced.
        self.ready: Any = loop._ready

    def get_debug(self) -> Any:
        return self.loop._debug

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
        loop = self.loop
        if loop._closed or loop._debug:
            # asyncio's: it raises for a closed loop, checks the thread and the callback
            # in debug mode, and trims the handle's source traceback
            return _call_soon(loop, callback, *args, context=context)
        handle = _Handle(callback, args, loop, context)
        self.ready.append(handle)
        return handle

    def create_task(self, coro: Any, *, name: Any = None, context: Any = None) -> Any:
        loop = self.loop
        if loop._closed or loop._debug or loop._task_factory is not None:
            return _create_task(loop, coro, name=name, context=context)
        return _Task(coro, loop=loop, name=name, context=context)
