"""A small DNS server for the tests, built on dnspython: UDP and TCP on 127.0.0.1, one random
port, served by one thread. It counts every query it receives, so tests can tell when the
resolver did or did not use the network."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Inject = Callable[[dns.message.Message, dns.message.Message], list[bytes]]


class FakeDNSServer:
    """Answers from ``records``: ``{"name.test": {"A": [...], "AAAA": [...], "CNAME": "x"}}``.

    An unknown name is NXDOMAIN; a known one without records of the asked type is NOERROR
    with no answer. ``mode`` changes the behaviour: ``"answer"``; ``"silent"`` (reads and
    counts, never answers); ``"hold"`` (keeps the UDP answers until ``release()``);
    ``"truncate"`` (UDP answers carry TC and no records; TCP answers are whole);
    ``"servfail"``. ``inject(query, reply)`` returns datagrams sent before each UDP answer.
    ``tcp=False``: no TCP listener (connects to the port are refused). ``soa=(ttl, minimum)``:
    negative answers carry an SOA in their authority section (without it, none).
    """

    def __init__(
        self,
        records: dict[str, dict] | None = None,
        mode: str = "answer",
        ttl: int = 300,
        inject: Inject | None = None,
        tcp: bool = True,
        soa: tuple[int, int] | None = None,
    ) -> None:
        self.records = {k.lower(): v for k, v in (records or {}).items()}
        self.soa = soa
        self.mode = mode
        self.ttl = ttl
        self.inject = inject
        self.lock = threading.Lock()
        self.udp_queries = 0
        self.tcp_queries = 0
        self.queries: list[tuple[str, str, str]] = []  # (name, type, "udp"/"tcp")
        self.held: list[tuple[bytes, tuple]] = []
        self.got_query = threading.Condition(self.lock)
        self._stop = False
        self.udp, self.tcp = self._bind()
        self.addr: tuple[str, int] = self.udp.getsockname()
        self.port = self.addr[1]
        if not tcp:  # nothing listens on the TCP port: a connect to it is refused
            self.tcp.close()
        self._thread = threading.Thread(target=self._run, name=f"dns-server-{self.port}")
        self._thread.start()

    @staticmethod
    def _bind() -> tuple[socket.socket, socket.socket]:
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise RuntimeError("no port free for both UDP and TCP")

    # ------------------------------------------------------------------ test side

    @property
    def total_queries(self) -> int:
        with self.lock:
            return self.udp_queries + self.tcp_queries

    def wait_queries(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until ``n`` queries (UDP + TCP) arrived."""
        with self.got_query:
            return self.got_query.wait_for(
                lambda: self.udp_queries + self.tcp_queries >= n, timeout
            )

    def release(self) -> int:
        """Send every held answer now, back to back; the number sent."""
        with self.lock:
            held, self.held = self.held, []
        for data, addr in held:
            self.udp.sendto(data, addr)
        return len(held)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.udp.close()
        self.tcp.close()

    # ------------------------------------------------------------------ server side

    def _run(self) -> None:
        while not self._stop:
            socks = [self.udp] if self.tcp.fileno() < 0 else [self.udp, self.tcp]
            r, _, _ = select.select(socks, [], [], 0.02)
            if self.udp in r:
                data, addr = self.udp.recvfrom(65535)
                self._on_udp(data, addr)
            if self.tcp in r:
                conn, _ = self.tcp.accept()
                with conn:
                    self._on_tcp(conn)

    def _count(self, q: dns.message.Message, proto: str) -> None:
        with self.got_query:
            if proto == "udp":
                self.udp_queries += 1
            else:
                self.tcp_queries += 1
            if q.question:
                rr = q.question[0]
                name = rr.name.to_text().rstrip(".").lower()
                self.queries.append((name, dns.rdatatype.to_text(rr.rdtype), proto))
            self.got_query.notify_all()

    def _on_udp(self, data: bytes, addr: tuple) -> None:
        try:
            q = dns.message.from_wire(data)
        except Exception:
            return
        # Counted before the answer leaves (a test that got the answer sees the count), and
        # after a held answer is stored (a test that saw the count may release it).
        if self.mode == "silent":
            self._count(q, "udp")
            return
        reply = self.reply(q, truncate=self.mode == "truncate")
        wire = reply.to_wire()
        extra = self.inject(q, reply) if self.inject is not None else []
        if self.mode == "hold":
            with self.lock:
                self.held.extend((d, addr) for d in extra + [wire])
            self._count(q, "udp")
            return
        self._count(q, "udp")
        for d in extra:
            self.udp.sendto(d, addr)
        self.udp.sendto(wire, addr)

    def _on_tcp(self, conn: socket.socket) -> None:
        # One query per connection: read it, answer, close (the client sees EOF).
        conn.settimeout(2.0)
        try:
            head = _recv_exactly(conn, 2)
            data = _recv_exactly(conn, int.from_bytes(head, "big"))
            q = dns.message.from_wire(data)
        except (OSError, ValueError, dns.exception.DNSException):
            return
        self._count(q, "tcp")
        if self.mode != "silent":
            wire = self.reply(q, truncate=False).to_wire()
            conn.sendall(len(wire).to_bytes(2, "big") + wire)

    def reply(self, q: dns.message.Message, truncate: bool = False) -> dns.message.Message:
        """The answer this server gives to ``q``."""
        r = dns.message.make_response(q)
        if self.mode == "servfail":
            r.set_rcode(dns.rcode.SERVFAIL)
            return r
        if truncate:
            r.flags |= dns.flags.TC
            return r
        rr = q.question[0]
        name = rr.name.to_text().rstrip(".").lower()
        owner = rr.name
        seen = 0
        while True:
            rec = self.records.get(name)
            if rec is None:
                if seen == 0:
                    r.set_rcode(dns.rcode.NXDOMAIN)
                return self._negative(r)
            cname = rec.get("CNAME")
            if cname is not None and rr.rdtype != dns.rdatatype.CNAME:
                target = dns.name.from_text(cname)
                r.answer.append(dns.rrset.from_text(owner, self.ttl, "IN", "CNAME", cname + "."))
                owner, name, seen = target, cname.lower(), seen + 1
                continue
            addrs = rec.get(dns.rdatatype.to_text(rr.rdtype), [])
            if not addrs:
                return self._negative(r)  # NODATA
            r.answer.append(
                dns.rrset.from_text(
                    owner, self.ttl, "IN", dns.rdatatype.to_text(rr.rdtype), *addrs
                )  # fmt: skip
            )
            return r

    def _negative(self, r: dns.message.Message) -> dns.message.Message:
        """With ``soa=(ttl, minimum)``: the SOA of ``test.`` in the authority section of a
        negative answer, which makes it cacheable (RFC 2308)."""
        if self.soa is not None:
            ttl, minimum = self.soa
            r.authority.append(
                dns.rrset.from_text(
                    "test.", ttl, "IN", "SOA", f"ns.test. admin.test. 1 3600 600 86400 {minimum}"
                )
            )
        return r


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        b = conn.recv(n - len(out))
        if not b:
            raise ValueError("EOF")
        out += b
    return out


def closed_udp_port() -> int:
    """A UDP port on 127.0.0.1 nothing listens on (a query to it gets ICMP unreachable)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
