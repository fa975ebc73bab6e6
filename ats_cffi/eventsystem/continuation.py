"""Continuation: a mutex and a handler that receives events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ats_cffi.eventsystem.mutex import ProxyMutex

Handler = Callable[[int, Any], Any]


class Continuation:
    """ATS's Continuation: ``handle_event(event, data)`` calls the current handler.

    Events are delivered with ``mutex`` held by the delivering thread. A continuation
    scheduled without a mutex gets a new one at its first schedule, so that
    ``Event.cancel()`` can always synchronise with delivery.
    """

    __slots__ = ("mutex", "handler", "__weakref__", "__dict__")

    def __init__(self, mutex: ProxyMutex | None = None, handler: Handler | None = None) -> None:
        if mutex is not None and not isinstance(mutex, ProxyMutex):
            raise TypeError(f"Continuation: mutex must be a ProxyMutex, not {type(mutex).__name__}")
        self.mutex = mutex
        self.handler: Handler | None = None
        if handler is not None:
            self.set_handler(handler)

    def set_handler(self, handler: Handler) -> None:
        """Make ``handler(event, data)`` receive the following events (ATS's SET_HANDLER)."""
        if not callable(handler):
            raise TypeError(f"set_handler: handler must be callable, not {type(handler).__name__}")
        self.handler = handler

    def handle_event(self, event: int = 0, data: Any = None) -> Any:
        """Deliver ``event`` to the current handler. ``RuntimeError`` if none is set."""
        h = self.handler
        if h is None:
            raise RuntimeError(f"{type(self).__name__}: no handler set")
        return h(event, data)


def check_continuation(call: str, cont: Any) -> Continuation:
    """Raise ``TypeError`` naming ``call`` unless ``cont`` is a Continuation; give it a mutex."""
    if not isinstance(cont, Continuation):
        raise TypeError(f"{call}: cont must be a Continuation, not {type(cont).__name__}")
    if cont.mutex is None:
        cont.mutex = ProxyMutex()
    return cont
