"""DNSLookup (what a caller holds) and DNSEntry (one question on the wire).

A lookup is one caller's request; an entry is one question ``(name, A or AAAA)`` of one
DNSHandler. Lookups of the same question made while it is pending share its entry (ATS
collapses them the same way), so a burst of lookups of one name sends one question. A
lookup delivers its own answer (``DNSLookup.post``).
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any, Protocol

import dns.message
import dns.rdataclass
import dns.rdatatype

from ats_cffi.dns.codes import DNS_EVENT_LOOKUP, DNSError
from ats_cffi.dns.hostent import HostEnt
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.event import Action
from ats_cffi.eventsystem.mutex import ProxyMutex

if TYPE_CHECKING:
    from ats_cffi.dns.connection import DNSConnection
    from ats_cffi.eventsystem.ethread import EThread
    from ats_cffi.eventsystem.event import Event

log = logging.getLogger("ats.dns")

_QTYPE = {socket.AF_INET: dns.rdatatype.A, socket.AF_INET6: dns.rdatatype.AAAA}


class EntryOwner(Protocol):
    """What a DNSEntry needs of its DNSHandler: the mutex they share, and the call its
    timeout makes."""

    mutex: ProxyMutex | None

    def timed_out(self, entry: DNSEntry) -> None: ...


class DNSLookup(Action):
    """What ``dns_processor.gethostbyname`` returns.

    ``cancel()`` (any thread) guarantees that no ``DNS_EVENT_LOOKUP`` reaches the continuation
    once it returns: delivery happens with the continuation's mutex held and checks
    ``cancelled`` under it. ``families`` are tried in order, the next one only when the
    previous has no address (NODATA): ``(AF_INET, AF_INET6)`` for ``AF_UNSPEC``.
    """

    def __init__(self, cont: Continuation, name: str, families: tuple[int, ...]) -> None:
        super().__init__(cont)
        self.name = name
        self.families = families
        self.family_index = 0
        #: The result was handed over (delivered, or queued for delivery).
        self.done = False

    @property
    def family(self) -> int:
        return self.families[self.family_index]

    def post(self, thread: EThread, ent: HostEnt) -> None:
        """Deliver ``DNS_EVENT_LOOKUP`` with ``ent`` (once) on ``thread``, the handler's,
        with the asker's mutex held: now if it is free, else as an event that the thread
        retries until it is. Nothing reaches a cancelled lookup's continuation."""
        if self.done:
            return
        self.done = True
        m = self.mutex
        if m is not None and m.try_lock():
            try:
                self._deliver(ent)
            except Exception:
                log.exception("DNS_EVENT_LOOKUP handler of %r raised", self)
            finally:
                m.unlock()
            return
        thread.schedule_imm(Continuation(m, lambda event, e: self._deliver(ent)))

    def _deliver(self, ent: HostEnt) -> None:
        if not self.cancelled:
            self.continuation.handle_event(DNS_EVENT_LOOKUP, ent)  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"<DNSLookup {self.name} families={self.families} cancelled={self.cancelled}>"


class DNSEntry(Continuation):
    """One pending question of one DNSHandler; its timeout event's continuation.

    Touched only on the handler's thread with the handler's mutex held (it *is* its mutex).
    ``written`` means a try is on the wire and counted in the handler's ``in_flight``;
    ``ids`` are the query ids of every try, so that a late answer to an earlier try (from
    a slow first server) is still taken; ``conn`` is the connection of the current try.
    ``retries`` counts the tries left after the current one.
    """

    def __init__(self, handler: EntryOwner, name: str, family: int, retries: int) -> None:
        super().__init__(handler.mutex)
        self.dns_handler = handler
        self.name = name
        self.family = family
        self.qtype = _QTYPE[family]
        self.query = dns.message.make_query(name + ".", self.qtype, dns.rdataclass.IN)
        self.waiters: list[DNSLookup] = []
        self.ids: list[int] = []
        self.retries = retries
        self.which_ns = -1
        self.conn: DNSConnection | None = None
        self.written = False
        self.finished = False
        self.timeout: Event | None = None
        #: Reported if the tries run out: why the last one failed.
        self.last_error = DNSError.TIMEOUT
        #: Where to send when it leaves the handler's waiting queue.
        self.next_ns = 0
        self.next_tcp = False
        self.set_handler(self.timeout_event)

    def live(self) -> bool:
        """Someone still wants the answer (not every waiting lookup was cancelled)."""
        for w in self.waiters:
            if not w.cancelled:
                return True
        return False

    def timeout_event(self, event: int, e: Any) -> None:
        """No answer within ``lookup_timeout``: the handler retries or fails the entry."""
        self.dns_handler.timed_out(self)

    def __repr__(self) -> str:
        qtype = dns.rdatatype.to_text(self.qtype)
        return f"<DNSEntry {self.name} {qtype} ns={self.which_ns} retries={self.retries}>"
