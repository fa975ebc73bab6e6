"""Which EThread runs the calling code, and whether that code may block.

``this_ethread()`` is the EThread whose OS thread calls it (None on any other thread);
``on_event_thread()`` is True on a REGULAR one, where nothing may block. Kept apart from
``ethread.py`` so that ``event.py`` (which ``ethread.py`` imports) can ask too;
``ats_cffi.eventsystem.ethread`` re-exports these names.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ats_cffi.eventsystem.ethread import EThread

#: An EThread's kind (``EThread.tt``): REGULAR runs the event loop, DEDICATED one event.
REGULAR = "REGULAR"
DEDICATED = "DEDICATED"

_tls = threading.local()


def set_this_ethread(thread: EThread | None) -> None:
    """Make ``thread`` the calling OS thread's EThread (its first step, on that thread);
    None: the thread runs no EThread (again)."""
    _tls.ethread = thread


def this_ethread() -> EThread | None:
    """The EThread running the calling code, or None on another thread."""
    return getattr(_tls, "ethread", None)


def on_event_thread() -> bool:
    """True when a REGULAR EThread runs the calling code: it must never block (nor wait for
    a lock another thread holds)."""
    t = this_ethread()
    return t is not None and t.tt == REGULAR
