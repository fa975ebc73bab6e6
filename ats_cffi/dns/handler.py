"""DNSHandler: the DNS side of one net thread (ATS's DNSHandler).

One handler per net thread owns a UDP DNSConnection per name server (and, on demand, a TCP
one), the questions it has on the wire, and their timeouts. Everything in it runs on its
thread with its mutex held: lookups arrive as immediate events (``submit_event``), answers
through ``DNSConnection.trigger`` from the NetHandler, timeouts as the entries' own events.

A question's life:

1. ``start_lookup``: an IP literal, the hosts file or the cache answer at once; a question
   already pending takes the lookup as one more waiter; else a new DNSEntry is written to
   a name server (``write_dns``) and its timeout armed (``schedule_in`` on this thread; the
   same Event is re-armed for every try).
2. ``recv_dns`` drains the triggered connections until EAGAIN. An answer is taken only if
   its id belongs to a pending question *sent on that connection* and its question section
   is that question (``answer.read_answer``: dnspython's ``is_response``); anything else is
   dropped and counted (unknown id, wrong question, malformed, or for a question every
   asker cancelled).
3. A taken answer ends the try: truncated (TC) → the same server is asked over TCP;
   NOERROR → addresses (the CNAME chain followed: ``answer.addresses``), or NODATA;
   NXDOMAIN → failure; any other rcode (SERVFAIL, REFUSED, ...) → retry on the next
   server.
4. A timeout, a send error or a failed connection also retries on the next server, and
   the handler's primary moves on (failover); after ``retries`` retries the lookup fails
   with the last reason.
5. ``finish`` answers every waiter with ``DNS_EVENT_LOOKUP`` and a HostEnt (each lookup
   delivers its own: ``DNSLookup.post``), caches a good or negative answer (NXDOMAIN,
   NODATA: for their SOA's negative TTL, RFC 2308), and lets questions waiting for a free
   in-flight slot go.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import dns.flags
import dns.rcode

from ats_cffi import sys as _sys
from ats_cffi.dns import stats as st
from ats_cffi.dns.answer import addresses, local_answer, negative, rcode_error, read_answer
from ats_cffi.dns.cache import HostCache
from ats_cffi.dns.codes import DNSConnMode, DNSError
from ats_cffi.dns.config import DNSConfig, NameServer
from ats_cffi.dns.connection import DNSConnection
from ats_cffi.dns.entry import DNSEntry, DNSLookup
from ats_cffi.dns.hostent import SOURCE_HOSTS, HostEnt
from ats_cffi.dns.resolv import HostsFile
from ats_cffi.dns.stats import dns_stats
from ats_cffi.eventsystem.codes import EVENT_DONE
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.mutex import ProxyMutex

if TYPE_CHECKING:
    from ats_cffi.eventsystem.ethread import EThread
    from ats_cffi.net.nethandler import NetHandler

log = logging.getLogger("ats.dns")

#: Answers read from one connection per trigger. A connection flooded with datagrams must
#: not hold the net thread; what is left is reported again thanks to the refresh.
MAX_ANSWERS_PER_TRIGGER = 256


class ResolverState(Protocol):
    """What a DNSHandler reads of the DNSProcessor that made it (set before it starts)."""

    config: DNSConfig
    servers: tuple[NameServer, ...]
    conn_mode: DNSConnMode
    hosts: HostsFile
    cache: HostCache


class DNSHandler(Continuation):
    """The DNS handler of one net thread. Only its thread touches it, with ``mutex`` held
    (see the module doc); ``close`` is the one call made from elsewhere, once the thread
    has ended."""

    def __init__(self, processor: ResolverState, thread: EThread, nh: NetHandler) -> None:
        super().__init__(ProxyMutex())
        self.processor = processor
        self.config = processor.config
        self.thread = thread
        self.pd = nh.pd
        self.servers = processor.servers
        self.conn_mode = processor.conn_mode
        n = len(self.servers)
        self.udpcon: list[DNSConnection | None] = [None] * n
        self.tcpcon: list[DNSConnection | None] = [None] * n
        #: Connections with readiness to drain (DNSConnection.trigger appends).
        self.triggered: deque[DNSConnection] = deque()
        #: Pending questions by (name, family), and by the query id of each try.
        self.entries: dict[tuple[str, int], DNSEntry] = {}
        self.by_id: dict[int, tuple[DNSEntry, DNSConnection]] = {}
        #: Questions waiting for an in-flight slot (max_dns_in_flight).
        self.waiting: deque[DNSEntry] = deque()
        self.in_flight = 0
        self._in_write_waiting = False
        #: Index of the server new questions go to (the primary, or the next in round robin).
        self.name_server = 0
        self.stats = dns_stats.new_block()
        self.closed = False
        self.set_handler(self.submit_event)

    # ------------------------------------------------------------------ connections

    def open_cons(self) -> None:
        """Open the UDP connection to every server (on the handler's thread). A server that
        cannot be reached now is retried when a question is next sent to it."""
        if self.conn_mode == DNSConnMode.TCP_ONLY:
            return
        for i in range(len(self.servers)):
            try:
                self.get_con(i, False)
            except OSError as exc:
                log.warning("cannot open a DNS connection to %s: %s", self.servers[i], exc)

    def get_con(self, ns: int, over_tcp: bool) -> DNSConnection:
        """The open connection to server ``ns`` (opened now if needed). ``OSError``."""
        cons = self.tcpcon if over_tcp else self.udpcon
        conn = cons[ns]
        if conn is None or conn.closed:
            conn = DNSConnection(self, ns, self.servers[ns], over_tcp)
            conn.connect(self.pd)
            cons[ns] = conn
            log.debug("opened %r", conn)
        return conn

    def triggered_event(self) -> None:
        """A connection was triggered: drain the queue if the mutex is free. If another
        thread holds it, the connection stays queued and the NetHandler's refresh reports
        it again on the next pass, when the mutex is tried again."""
        m = self.mutex
        if not m.try_lock():
            return
        try:
            self.recv_dns()
        except Exception:
            # Never let a bug here unwind into the NetHandler's dispatch of other sockets.
            log.exception("recv_dns failed")
        finally:
            m.unlock()

    # ------------------------------------------------------------------ lookups

    def submit_event(self, event: int, e: Any) -> int:
        """A lookup scheduled by gethostbyname (``e.cookie``) reaches the handler."""
        self.start_lookup(e.cookie)
        return EVENT_DONE

    def start_lookup(self, lookup: DNSLookup) -> None:
        """Answer ``lookup`` from a literal, the hosts file or the cache, or ask the network."""
        if lookup.cancelled:
            return
        name = lookup.name
        family = lookup.family
        if self.closed:
            lookup.post(self.thread, HostEnt.failure(name, family, DNSError.SHUTDOWN))
            return
        if lookup.family_index == 0:  # (the next families come after a NODATA from DNS)
            ent = local_answer(name, lookup.families, self.processor.hosts)
            if ent is not None:
                if ent.source == SOURCE_HOSTS:
                    self.stats[st.HOSTS_FILE_HITS] += 1
                lookup.post(self.thread, ent)
                return
        cached = self.processor.cache.get(name, family)
        if cached is not None:
            self.stats[st.CACHE_HITS] += 1
            lookup.post(self.thread, cached)
            return
        self.stats[st.CACHE_MISSES] += 1
        key = (name, family)
        entry = self.entries.get(key)
        if entry is not None:
            entry.waiters.append(lookup)
            return
        entry = DNSEntry(self, name, family, self.config.retries)
        entry.waiters.append(lookup)
        self.entries[key] = entry
        self.stats[st.TOTAL_DNS_LOOKUPS] += 1
        if not self.servers:
            entry.last_error = DNSError.NO_NAMESERVERS
            self.dns_result(entry, None, retry=False)
            return
        self.write_dns(entry, self.pick_ns())

    def pick_ns(self) -> int:
        """The server a new question goes to; round robin moves the primary on each time."""
        ns = self.name_server
        if self.config.round_robin_nameservers:
            self.name_server = (ns + 1) % len(self.servers)
        return ns

    def new_id(self) -> int:
        """A random query id not used by any pending try."""
        by_id = self.by_id
        for _ in range(16):
            qid = secrets.randbits(16)
            if qid not in by_id:
                return qid
        for qid in range(65536):
            if qid not in by_id:
                return qid
        raise OSError(errno.EAGAIN, "write_dns: every DNS query id is in use")

    def write_dns(self, entry: DNSEntry, ns: int, over_tcp: bool = False) -> None:
        """Send a try of ``entry`` to server ``ns`` and arm its timeout. A send that fails
        counts as a failed try (see ``dns_result``)."""
        if not entry.live():
            self.finish(entry, None)
            return
        if self.in_flight >= self.config.max_dns_in_flight:
            entry.next_ns = ns
            entry.next_tcp = over_tcp
            self.waiting.append(entry)
            return
        over_tcp = over_tcp or self.conn_mode == DNSConnMode.TCP_ONLY
        entry.which_ns = ns
        try:
            qid = self.new_id()
            entry.query.id = qid
            conn = self.get_con(ns, over_tcp)
            conn.send(entry.query.to_wire())
        except OSError as exc:
            log.info("cannot send the query for %s to %s: %s", entry.name, self.servers[ns], exc)
            entry.last_error = DNSError.NETWORK
            self.failover(ns)
            self.dns_result(entry, None, retry=True)
            return
        self.by_id[qid] = (entry, conn)
        entry.ids.append(qid)
        entry.conn = conn
        entry.written = True
        self.in_flight += 1
        self.stats[st.IN_FLIGHT] += 1
        timeout = self.config.lookup_timeout
        if entry.timeout is None:
            entry.timeout = self.thread.schedule_in(entry, timeout)
        else:
            entry.timeout.schedule_in(timeout)
        log.debug("sent %r id=%d over %r", entry, qid, conn)

    def _end_try(self, entry: DNSEntry) -> None:
        if entry.written:
            entry.written = False
            self.in_flight -= 1
            self.stats[st.IN_FLIGHT] -= 1

    def timed_out(self, entry: DNSEntry) -> None:
        """``entry``'s timeout fired (its event, on this thread)."""
        if entry.finished:
            return
        log.debug("timeout for %r", entry)
        self._end_try(entry)
        entry.last_error = DNSError.TIMEOUT
        self.failover(entry.which_ns)
        self.dns_result(entry, None, retry=True)

    def failover(self, ns: int) -> None:
        """Server ``ns`` failed a try: if it is the primary, the next server becomes it."""
        n = len(self.servers)
        if n > 1 and ns == self.name_server and not self.config.round_robin_nameservers:
            self.name_server = (ns + 1) % n
            log.warning(
                "failover: DNS server %s failed, moving to %s", self.servers[ns],
                self.servers[self.name_server],
            )  # fmt: skip

    def dns_result(self, entry: DNSEntry, ent: HostEnt | None, retry: bool) -> None:
        """A try ended with ``ent`` (None: failed with ``entry.last_error``). Retry on the
        next server when ``retry`` and tries are left, else finish."""
        if entry.finished:
            return
        if not entry.live():
            self.finish(entry, None)
            return
        if ent is None or not ent.good:
            if retry and entry.retries > 0:
                entry.retries -= 1
                self.stats[st.RETRIES] += 1
                self.write_dns(entry, (entry.which_ns + 1) % len(self.servers))
                return
            if retry:
                self.stats[st.MAX_RETRIES_EXCEEDED] += 1
            if ent is None:
                ent = HostEnt.failure(entry.name, entry.family, entry.last_error)
        self.finish(entry, ent)

    def finish(self, entry: DNSEntry, ent: HostEnt | None) -> None:
        """Take ``entry`` off every list and answer its waiters with ``ent`` (None: no one
        is left to answer)."""
        if entry.finished:
            return
        entry.finished = True
        key = (entry.name, entry.family)
        if self.entries.get(key) is entry:
            del self.entries[key]
        by_id = self.by_id
        for qid in entry.ids:
            hit = by_id.get(qid)
            if hit is not None and hit[0] is entry:
                del by_id[qid]
        self._end_try(entry)
        if entry.timeout is not None:
            entry.timeout.cancel()
            entry.timeout = None
        if ent is not None:
            self.stats[st.LOOKUP_SUCCESSES if ent.good else st.LOOKUP_FAILURES] += 1
            self.processor.cache.put(ent)  # it keeps good and negative answers only
            log.debug("%s for %r: %r", "SUCCESS" if ent.good else "FAIL", entry, ent)
            for lookup in entry.waiters:
                self.answer(lookup, ent)
        self.write_waiting()

    def write_waiting(self) -> None:
        """Send questions that waited for an in-flight slot, while slots are free."""
        if self._in_write_waiting:
            return
        self._in_write_waiting = True
        try:
            waiting = self.waiting
            while waiting and self.in_flight < self.config.max_dns_in_flight:
                entry = waiting.popleft()
                if not entry.finished:
                    self.write_dns(entry, entry.next_ns, entry.next_tcp)
        finally:
            self._in_write_waiting = False

    def answer(self, lookup: DNSLookup, ent: HostEnt) -> None:
        """Give ``ent`` to ``lookup``, or ask its next family when this one had no address."""
        if lookup.cancelled:
            return
        if ent.error is DNSError.NODATA and lookup.family_index + 1 < len(lookup.families):
            lookup.family_index += 1
            self.start_lookup(lookup)
            return
        lookup.post(self.thread, ent)

    # ------------------------------------------------------------------ answers

    def recv_dns(self) -> None:
        """Drain every triggered connection (until EAGAIN, or the per-trigger limit)."""
        triggered = self.triggered
        while triggered:
            conn = triggered.popleft()
            conn.in_triggered = False
            if conn.closed:
                continue
            if conn.tcp:
                self.recv_tcp(conn)
            else:
                self.recv_udp(conn)

    def recv_udp(self, conn: DNSConnection) -> None:
        for _ in range(MAX_ANSWERS_PER_TRIGGER):
            try:
                n = conn.read()
            except OSError as exc:
                # ECONNREFUSED: an ICMP port-unreachable for an earlier query. The error is
                # consumed by this read; answers queued behind it are still read.
                self.con_failed(conn, exc.errno or errno.EIO)
                if conn.closed:
                    return
                continue
            if n == _sys.AGAIN:
                return
            self.process_answer(conn, bytes(conn.view[:n]))

    def recv_tcp(self, conn: DNSConnection) -> None:
        if conn.connecting:
            err = _sys.so_error(conn.fd)
            if err:
                self.con_failed(conn, err)
                return
            conn.connecting = False
        try:
            conn.flush()
        except OSError as exc:
            self.con_failed(conn, exc.errno or errno.EIO)
            return
        messages, err = conn.read_messages(MAX_ANSWERS_PER_TRIGGER)
        for data in messages:
            self.process_answer(conn, data)
            if conn.closed:
                return
        if err:  # ECONNRESET for the server's close
            self.con_failed(conn, err)

    def con_failed(self, conn: DNSConnection, err: int) -> None:
        """``conn`` reported ``err`` (or, TCP, was closed by the server): its pending tries
        fail and retry on the next server. A TCP connection is closed; a UDP one stays."""
        pending: dict[int, DNSEntry] = {}
        for entry, c in self.by_id.values():
            if c is conn and entry.written and entry.conn is conn:
                pending[id(entry)] = entry
        if conn.tcp:
            if pending:
                self.stats[st.TCP_RESET] += 1
            conn.close()
            if self.tcpcon[conn.num] is conn:
                self.tcpcon[conn.num] = None
        if pending or not conn.tcp:
            log.info("DNS connection %r failed: %s", conn, os.strerror(err))
        for entry in pending.values():
            self._end_try(entry)
            entry.last_error = DNSError.NETWORK
            self.failover(conn.num)
            self.dns_result(entry, None, retry=True)

    def _drop(self, counter: int, conn: DNSConnection, why: str) -> None:
        self.stats[st.BAD_ANSWERS_DROPPED] += 1
        self.stats[counter] += 1
        log.debug("dropped an answer on %r: %s", conn, why)

    def process_answer(self, conn: DNSConnection, data: bytes) -> None:
        """Match one answer to its pending question and act on it (see the module doc)."""
        self.stats[st.ANSWERS_RECEIVED] += 1
        if len(data) < 12:
            self._drop(st.MALFORMED_ANSWERS, conn, "shorter than a header")
            return
        qid = (data[0] << 8) | data[1]
        hit = self.by_id.get(qid)
        if hit is None or hit[1] is not conn:
            self._drop(st.UNKNOWN_ID_ANSWERS, conn, f"no question with id {qid}")
            return
        entry = hit[0]
        if not entry.live():
            self._drop(st.CANCELLED_ANSWERS, conn, f"{entry.name} was cancelled")
            self.finish(entry, None)
            return
        entry.query.id = qid  # the query as this try sent it
        msg, counter, why = read_answer(entry.query, data)
        if msg is None:
            self._drop(counter, conn, f"{why} ({entry!r})")
            return
        truncated = bool(msg.flags & dns.flags.TC)
        # Taken: this id's try is over; a duplicate of it is now an unknown id.
        del self.by_id[qid]
        self._end_try(entry)
        if truncated and not conn.tcp and self.conn_mode != DNSConnMode.UDP_ONLY:
            log.debug("truncated answer for %r: asking over TCP", entry)
            self.stats[st.TCP_RETRIES] += 1
            self.write_dns(entry, conn.num, over_tcp=True)
            return
        rcode = msg.rcode()
        if rcode == dns.rcode.NOERROR:
            self.dns_result(entry, addresses(entry.name, entry.family, msg), retry=False)
        elif rcode == dns.rcode.NXDOMAIN:
            ent = negative(entry.name, entry.family, msg, DNSError.NXDOMAIN)
            self.dns_result(entry, ent, retry=False)
        else:
            entry.last_error = rcode_error(rcode)
            self.failover(conn.num)
            self.dns_result(entry, None, retry=True)

    # ------------------------------------------------------------------ life

    def close(self, post: bool = True) -> None:
        """Stop: every pending lookup gets ``DNSError.SHUTDOWN`` (when ``post``, i.e. on the
        handler's running thread), every connection is closed, the stats are retired."""
        with self.mutex:
            self.closed = True
            entries = list(self.entries.values()) + list(self.waiting)
            self.entries.clear()
            self.waiting.clear()
            self.by_id.clear()
            for entry in entries:
                if entry.finished:
                    continue
                entry.finished = True
                if entry.timeout is not None:
                    entry.timeout.cancel()
                    entry.timeout = None
                if post:
                    for lookup in entry.waiters:
                        if not lookup.cancelled:
                            fail = HostEnt.failure(lookup.name, lookup.family, DNSError.SHUTDOWN)
                            lookup.post(self.thread, fail)
            self.stats[st.IN_FLIGHT] -= self.in_flight
            self.in_flight = 0
            self.triggered.clear()
            for conn in self.udpcon + self.tcpcon:
                if conn is not None:
                    conn.close()
            dns_stats.retire(self.stats)
