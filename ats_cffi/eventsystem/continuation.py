"""Continuation: a mutex and a handler that receives events."""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType
from typing import Any, Final

from mypy_extensions import mypyc_attr

from ats_cffi.eventsystem.codes import EVENT_DONE
from ats_cffi.eventsystem.mutex import ProxyMutex

Handler = Callable[[int, Any], Any]
#: Compiled, a plain imported name is looked up in the module's dict on every use.
_MethodType: Final = MethodType
#: Whether a class keeps ``Continuation.handle_event``, by class: asked of the class by name
#: it costs two attribute lookups per continuation made (a connection's). Bounded: classes
#: made on the fly (a factory's) do not pile up.
_keeps_handle_event: Final[dict[type, bool]] = {}
_KEEPS_HANDLE_EVENT_MAX: Final = 256


@mypyc_attr(allow_interpreted_subclasses=True)
class Continuation:
    """ATS's Continuation: ``handle_event(event, data)`` calls the current handler.

    Events are delivered with ``mutex`` held by the delivering thread. A continuation
    scheduled without a mutex gets a new one at its first schedule, so that
    ``Event.cancel()`` can always synchronise with delivery.
    """

    __slots__ = ("mutex", "_handler", "_method", "calls_handler", "__weakref__", "__dict__")

    def __init__(self, mutex: Any = None, handler: Handler | None = None) -> None:
        if mutex is not None and not isinstance(mutex, ProxyMutex):
            raise TypeError(f"Continuation: mutex must be a ProxyMutex, not {type(mutex).__name__}")
        self.mutex = mutex
        #: The handler; for one of this object's own Python methods (``self.on_event``, the
        #: usual case), the plain function, called with ``self`` (``_method``): a bound
        #: method kept per continuation would cost an object per connection.
        self._handler: Callable[..., Any] | None = None
        self._method = False
        #: The class keeps this ``handle_event``: an event may go to ``handler`` directly
        #: (``deliver``). Compiled, ``handle_event`` called on an instance of a Python
        #: subclass is looked up by name on each call, in case the subclass overrides it.
        cls = type(self)
        keeps = _keeps_handle_event.get(cls)
        if keeps is None:
            keeps = cls.handle_event is Continuation.handle_event
            if len(_keeps_handle_event) >= _KEEPS_HANDLE_EVENT_MAX:
                _keeps_handle_event.clear()
            _keeps_handle_event[cls] = keeps
        self.calls_handler = keeps
        if handler is not None:
            self.set_handler(handler)

    @property
    def handler(self) -> Handler | None:
        """The current handler (None if none is set)."""
        h = self._handler
        if h is not None and self._method:
            return _MethodType(h, self)  # type: ignore[no-any-return]
        return h

    @handler.setter
    def handler(self, handler: Handler | None) -> None:
        if type(handler) is _MethodType and handler.__self__ is self:  # type: ignore[attr-defined]
            self._handler = handler.__func__  # type: ignore[attr-defined]
            self._method = True
        else:
            self._handler = handler
            self._method = False

    def set_handler(self, handler: Handler) -> None:
        """Make ``handler(event, data)`` receive the following events (ATS's SET_HANDLER)."""
        # A bound method (the usual handler) is callable: ``callable`` is looked up by name
        # in compiled code, so it is asked only of anything else.
        if type(handler) is not _MethodType and not callable(handler):
            raise TypeError(f"set_handler: handler must be callable, not {type(handler).__name__}")
        self.handler = handler

    def handle_event(self, event: int = 0, data: Any = None) -> Any:
        """Deliver ``event`` to the current handler. ``RuntimeError`` if none is set."""
        h = self._handler
        if h is None:
            raise RuntimeError(f"{type(self).__name__}: no handler set")
        if self._method:
            return h(self, event, data)
        return h(event, data)


def freed_handler(event: int, data: Any) -> int:
    """The handler of a continuation whose owner is gone (a freed VC or splice, a disarmed
    timeout): an event that still comes is dropped."""
    return EVENT_DONE


def deliver(cont: Continuation, event: int, data: Any) -> Any:
    """``cont.handle_event(event, data)``, calling the handler directly when the class keeps
    ``Continuation.handle_event`` (the same call, without the lookup by name that a compiled
    caller makes for a Python subclass)."""
    h = cont._handler
    if h is not None and cont.calls_handler:
        if cont._method:
            return h(cont, event, data)
        return h(event, data)
    return cont.handle_event(event, data)


def check_continuation(call: str, cont: Any, need_handler: bool = False) -> Continuation:
    """Raise ``TypeError`` naming ``call`` unless ``cont`` is a usable Continuation; give it
    a mutex if it has none.

    Usable: initialised (its ``__init__`` ran ``Continuation.__init__``), its ``mutex`` a
    ProxyMutex or None, and (``need_handler``) a handler set unless its class overrides
    ``handle_event``.
    Runs on every schedule: the common case is an isinstance and two attribute reads.
    """
    if not isinstance(cont, Continuation):
        raise TypeError(f"{call}: cont must be a Continuation, not {type(cont).__name__}")
    try:
        m = cont.mutex
        h = cont._handler
    except AttributeError:
        raise TypeError(
            f"{call}: cont ({type(cont).__name__}) was not initialised: its __init__ must "
            "call Continuation.__init__"
        ) from None
    if type(m) is not ProxyMutex:
        if m is None:
            cont.mutex = ProxyMutex()
        elif not isinstance(m, ProxyMutex):
            raise TypeError(f"{call}: cont.mutex must be a ProxyMutex, not {type(m).__name__}")
    if h is None and need_handler and type(cont).handle_event is Continuation.handle_event:
        raise TypeError(f"{call}: cont has no handler (set one with set_handler)")
    return cont
