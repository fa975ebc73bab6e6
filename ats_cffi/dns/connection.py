"""DNSConnection: one socket to one name server, an ``EVENTIO_DNS_CONNECTION`` in the epoll
of its DNSHandler's net thread (ATS's DNSConnection and DNSEventIO).

How readiness reaches the handler. The socket is registered edge-triggered, like every
socket of the net layer. When the NetHandler sees an event for it, it calls ``trigger()``,
then ``eio.refresh(EVENTIO_READ)``. ``trigger()`` puts the connection on the handler's
``triggered`` queue and asks the handler to drain it: the handler reads until EAGAIN if it
can take its mutex, and not at all if another thread holds it. The ``refresh`` that
follows re-arms the edge with ``EPOLL_CTL_MOD``: answers still queued in the socket (because
the handler could not run, or stopped at its per-trigger limit) are reported again on the
next pass instead of waiting, possibly for ever, for a new datagram to make a new edge.

A UDP connection is ``connect()``-ed to its server, so the kernel drops datagrams from any
other address, and an ICMP port-unreachable comes back as ``ECONNREFUSED`` on the next call.
The kernel picks a random ephemeral source port (ATS binds one at random itself).

A TCP connection (the fallback for truncated answers) frames each message with its 2-byte
length. It is registered for read and write; once its queued queries are written the write
interest is dropped (``modify(-EVENTIO_WRITE)``), so that the refresh after each trigger
re-arms reading only and an idle, writable socket does not report itself on every pass.

Everything here runs on the handler's thread, with the handler's mutex held.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from typing import TYPE_CHECKING, Protocol

from ats_cffi import sys as _sys
from ats_cffi._native import lib
from ats_cffi.dns.config import NameServer
from ats_cffi.net.codes import EVENTIO_DNS_CONNECTION, EVENTIO_READ, EVENTIO_WRITE
from ats_cffi.net.eventio import EventIO

if TYPE_CHECKING:
    from ats_cffi.net.poll import PollDescriptor

log = logging.getLogger("ats.dns")

#: Largest DNS message (the TCP length prefix is 16 bits; UDP payloads are smaller).
MAX_DNS_RESPONSE_LEN = 65536


class ConnectionOwner(Protocol):
    """What a DNSConnection needs of its DNSHandler: the queue of triggered connections,
    and the call that drains it."""

    triggered: deque[DNSConnection]

    def triggered_event(self) -> None: ...


class DNSConnection:
    """A non-blocking UDP (or TCP) socket to name server ``num`` at ``ip``."""

    def __init__(
        self, handler: ConnectionOwner, num: int, ip: NameServer, tcp: bool = False
    ) -> None:
        self.handler = handler
        self.num = num
        self.ip = ip
        self.tcp = tcp
        self.fd = -1
        self.eio = EventIO(EVENTIO_DNS_CONNECTION, self)
        #: On ``handler.triggered`` (so a second trigger before the drain queues it once).
        self.in_triggered = False
        #: Times the NetHandler triggered it (each kernel report, refreshed ones included).
        self.triggers = 0
        #: TCP: ``connect()`` is under way; its result comes with the first event.
        self.connecting = False
        self.closed = False
        # One receive buffer for the connection's life: a whole datagram fits in it.
        self.buf = bytearray(MAX_DNS_RESPONSE_LEN)
        self.view = memoryview(self.buf)
        #: TCP: bytes read that do not yet make a whole framed answer.
        self.rbuf = bytearray()
        #: TCP: framed queries not yet written.
        self.wbuf = bytearray()

    def connect(self, pd: PollDescriptor) -> None:
        """Open the socket, register it in ``pd``, then ``connect()`` it (registered first: a
        TCP connect's edge could otherwise come before the registration). ``OSError``
        naming the failing call; nothing is left open then."""
        family = lib.AF_INET6 if ":" in self.ip[0] else lib.AF_INET
        fd = _sys.socket(family, lib.SOCK_STREAM if self.tcp else lib.SOCK_DGRAM)
        try:
            if self.tcp:
                _sys.setsockopt_int(fd, lib.IPPROTO_TCP, lib.TCP_NODELAY, 1)
            self.eio.start(pd, fd, EVENTIO_READ | EVENTIO_WRITE if self.tcp else EVENTIO_READ)
            self.fd = fd
            self.connecting = _sys.connect(fd, self.ip) == _sys.IN_PROGRESS
        except BaseException:
            self.eio.stop()
            self.fd = -1
            _sys.close(fd)
            raise

    def trigger(self) -> None:
        """Called by the NetHandler for each event: queue on the handler's ``triggered`` list
        (once) and let the handler drain what it can (see the module doc)."""
        self.triggers += 1
        h = self.handler
        if not self.in_triggered and not self.closed:
            self.in_triggered = True
            h.triggered.append(self)
        h.triggered_event()

    def send(self, wire: bytes) -> None:
        """Send one query. UDP: one datagram; TCP: framed, written as far as the socket takes
        it, the rest when it becomes writable. ``OSError`` when it cannot be sent."""
        if self.tcp:
            self.wbuf += len(wire).to_bytes(2, "big")
            self.wbuf += wire
            if not self.connecting:
                self.flush()
            return
        n = _sys.write(self.fd, wire)
        if n != len(wire):
            # AGAIN: the socket buffer is full; a datagram is all or nothing.
            raise OSError(errno.ENOBUFS, "send: no room for the DNS query in the socket buffer")

    def flush(self) -> None:
        """TCP: write queued queries until done or EAGAIN; keep write interest only while
        some remain. ``OSError`` from ``send``."""
        wbuf = self.wbuf
        while wbuf:
            n = _sys.write(self.fd, wbuf)
            if n == _sys.AGAIN:
                if not self.eio.events & EVENTIO_WRITE:
                    self.eio.modify(EVENTIO_WRITE)
                    self.eio.refresh(EVENTIO_READ)  # apply the wider mask to the kernel
                return
            del wbuf[:n]
        if self.eio.events & EVENTIO_WRITE:
            # Applied by the refresh that follows this trigger (or the next one).
            self.eio.modify(-EVENTIO_WRITE)

    def read(self) -> int:
        """One ``read()`` into ``buf``: the byte count (a whole datagram for UDP), 0 at EOF
        (TCP), or ``sys.AGAIN``. ``OSError`` for an error (e.g. ``ECONNREFUSED``)."""
        return _sys.read_into(self.fd, self.buf)

    def read_messages(self, max_reads: int) -> tuple[list[bytes], int]:
        """TCP: read until EAGAIN (at most ``max_reads`` reads) and cut what came into
        messages by their 2-byte length; a message not yet whole waits in ``rbuf``.
        Returns the whole messages and 0, or with the errno that ended the reading
        (``ECONNRESET`` when the server closed): the messages read before it count."""
        rbuf = self.rbuf
        messages: list[bytes] = []
        err = 0
        for _ in range(max_reads):
            try:
                n = self.read()
            except OSError as exc:
                err = exc.errno or errno.EIO
                break
            if n == _sys.AGAIN:
                break
            if n == 0:
                err = errno.ECONNRESET
                break
            rbuf += self.view[:n]
            while len(rbuf) >= 2:
                size = (rbuf[0] << 8) | rbuf[1]
                if len(rbuf) < 2 + size:
                    break
                messages.append(bytes(rbuf[2 : 2 + size]))
                del rbuf[: 2 + size]
        return messages, err

    def close(self) -> None:
        """Unregister and close the socket; a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        self.eio.stop()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            _sys.close(fd)

    def __repr__(self) -> str:
        kind = "tcp" if self.tcp else "udp"
        return f"<DNSConnection {kind} #{self.num} {self.ip[0]}:{self.ip[1]} fd={self.fd}>"
