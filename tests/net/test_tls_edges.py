"""SSLNetVConnection under the edge-trigger rules, its handshake timeout, and bad input:
each bad peer ends its own connection only, counted, and the listener serves on."""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
from typing import Any

import pytest

from ats_cffi.eventsystem import Continuation, MIOBuffer, ProxyMutex
from ats_cffi.eventsystem.codes import (
    VC_EVENT_ACTIVE_TIMEOUT,
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_INACTIVITY_TIMEOUT,
    VC_EVENT_READ_COMPLETE,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
    VC_EVENT_WRITE_READY,
)
from ats_cffi.net import net_stats
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.options import AcceptOptions
from ats_cffi.net.stats import tls_stats
from ats_cffi.net.tls import ServerContext, tls_config

from .conftest import OPEN, Echo, on_thread, payload_of, unread_bytes, wait_until
from .test_tls_server import client_ctx, connect, echo_round_trip
from .tls_certs import TestCA

ERROR_SSL = "proxy.process.ssl.ssl_error_ssl"
ERROR_SYSCALL = "proxy.process.ssl.ssl_error_syscall"


def server_ctx(ca: TestCA, **leaf: Any) -> ServerContext:
    cert = ca.leaf("localhost", "localhost", "127.0.0.1", **leaf)
    return ServerContext.from_files(cert.cert, cert.key)


class ClosingEcho(Echo):
    """An echo that closes on every end: EOS, ERROR and the timeouts; ``ends`` has them."""

    ends: list[tuple[int, int]] = []

    def handle(self, event: int, vio: Any) -> None:
        if event in (VC_EVENT_INACTIVITY_TIMEOUT, VC_EVENT_ACTIVE_TIMEOUT, VC_EVENT_EOS,
                     VC_EVENT_ERROR):  # fmt: skip
            ClosingEcho.ends.append((event, self.vc.lerrno))
            self.vc.do_io_close()
            return
        super().handle(event, vio)


class Reader(Continuation):
    """Reads ``want`` bytes, first ``first`` of them with a VIO of that size (the rest with
    a second one, asked for from the handler): ``got``, and ``done`` once all came."""

    def __init__(self, vc: Any, want: int, first: int | None = None) -> None:
        super().__init__(ProxyMutex())
        self.vc, self.want = vc, want
        self.buf = MIOBuffer(4096)
        self.reader = self.buf.alloc_reader()
        self.got = bytearray()
        self.done = threading.Event()
        self.set_handler(self.handle)
        with self.mutex:  # type: ignore[union-attr]
            vc.do_io_read(self, first if first is not None else want, self.buf)

    def handle(self, event: int, vio: Any) -> None:
        self.got += self.reader.read()
        if event == VC_EVENT_READ_COMPLETE and len(self.got) < self.want:
            # The rest of the peer's record is inside OpenSSL now; the socket is empty.
            self.vc.do_io_read(self, self.want - len(self.got), self.buf)
        elif event == VC_EVENT_READ_READY:
            vio.reenable()
        else:
            self.done.set()


def test_plaintext_left_inside_openssl_is_read_without_a_new_edge(net, listen, ca) -> None:
    # One 10,000-byte record; the first VIO takes 10 bytes of it. OpenSSL decrypted the
    # whole record, so the socket is drained and no epoll edge will ever come for the
    # other 9,990 bytes: only read.triggered, kept because OpenSSL did not say WANT_READ,
    # brings them to the second VIO.
    readers: list[Reader] = []
    _, _, port = listen(lambda vc: readers.append(Reader(vc, 10_000, first=10)),
                        tls=server_ctx(ca))  # fmt: skip
    data = payload_of(10_000)
    with connect(port, client_ctx(ca)) as s:
        s.sendall(data)
        assert wait_until(lambda: readers and readers[0].done.is_set())
        assert bytes(readers[0].got) == data
        assert unread_bytes(readers[0].vc.fd) == 0


def test_a_handshake_whose_write_would_block_in_a_read_turn_goes_on_at_the_write_edge(
    net, listen, ca
) -> None:
    # The server's flight (a certificate chain of ~100 KB) is written in the read turn
    # that brought the ClientHello; the client reads nothing for a while, so OpenSSL's
    # write would block (WANT_WRITE). The VC has only a read VIO: its write side gets
    # the turn at the write edge all the same (tls_turns), and the handshake completes.
    readers: list[Reader] = []
    ctx = server_ctx(ca, chain_extra=200)
    _, _, port = listen(lambda vc: readers.append(Reader(vc, 5)), tls=ctx, send_bufsize=4096)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(5)
    raw.connect(("127.0.0.1", port))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with raw:
        for _ in range(10_000):
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(1024))  # slowly: a small window for the server's flight
        assert obj.version() == "TLSv1.3"
        obj.write(b"hello")
        raw.sendall(outgoing.read())
        assert wait_until(lambda: readers and readers[0].done.is_set())
        assert bytes(readers[0].got) == b"hello"


def test_a_server_that_speaks_first_drives_its_handshake_from_the_write_side(
    net, listen, ca
) -> None:
    class Greeter(Continuation):
        def __init__(self, vc: Any) -> None:
            super().__init__(ProxyMutex())
            buf = MIOBuffer(4096)
            reader = buf.alloc_reader()
            buf.write(b"220 hello\r\n")
            self.set_handler(lambda ev, vio: vc.do_io_close() if ev != VC_EVENT_WRITE_COMPLETE
                             else None)  # fmt: skip
            with self.mutex:  # type: ignore[union-attr]
                vc.do_io_write(self, 11, reader)

    _, _, port = listen(Greeter, tls=server_ctx(ca))
    with connect(port, client_ctx(ca)) as s:
        assert s.recv(100) == b"220 hello\r\n"


def test_a_zero_byte_vio_completes_when_the_handshake_is_done(net, listen, ca) -> None:
    events: list[int] = []
    done = threading.Event()

    def on_vc(vc: Any) -> None:
        def handle(event: int, vio: Any) -> None:
            events.append(event)
            done.set()

        cont = Continuation(ProxyMutex(), handle)
        with cont.mutex:  # type: ignore[union-attr]
            vc.do_io_read(cont, 0, MIOBuffer(4096))

    _, acceptor, port = listen(on_vc, tls=server_ctx(ca))
    with connect(port, client_ctx(ca)):
        assert done.wait(5)
        assert events == [VC_EVENT_READ_COMPLETE]
        acceptor.vcs[0].do_io_close()


def test_a_stalled_handshake_is_closed_after_handshake_timeout_in(
    fake_listen, fake_clock, ca
) -> None:
    tls_config.set("proxy.config.ssl.handshake_timeout_in", 3)
    ClosingEcho.ends = []
    _, acceptor, port = fake_listen(ClosingEcho, tls=server_ctx(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\xff")  # the start of a ClientHello, and no more
        acceptor.wait()
        fake_clock.advance(2.5)
        assert ClosingEcho.ends == []
        fake_clock.advance(1.0)
        assert wait_until(lambda: ClosingEcho.ends == [(VC_EVENT_INACTIVITY_TIMEOUT, 0)])
        assert s.recv(10) == b""
    assert tls_stats.get("proxy.process.ssl.ssl_handshake_timeouts") == 1
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_the_handshake_timeout_gives_way_to_the_continuations_own_once_done(
    fake_listen, fake_clock, ca
) -> None:
    tls_config.set("proxy.config.ssl.handshake_timeout_in", 1)
    ClosingEcho.ends = []

    def on_vc(vc: Any) -> None:
        vc.set_inactivity_timeout(30)
        ClosingEcho(vc)

    _, _, port = fake_listen(on_vc, tls=server_ctx(ca))
    with connect(port, client_ctx(ca)) as s:
        assert echo_round_trip(s, b"ping") == b"ping"
        fake_clock.advance(10)
        assert echo_round_trip(s, b"still") == b"still"
        fake_clock.advance(20)  # (the cop sees a VC idle since its previous run)
        fake_clock.advance(11)
        assert wait_until(lambda: ClosingEcho.ends == [(VC_EVENT_INACTIVITY_TIMEOUT, 0)])
    assert tls_stats.get("proxy.process.ssl.ssl_handshake_timeouts") == 0


def client_hello() -> bytes:
    """A real ClientHello's bytes (from Python's ssl, through memory BIOs)."""
    obj = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(),
                                                server_hostname="localhost")  # fmt: skip
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def send_and_end(port: int, data: bytes, then: str) -> bytes:
    """Send ``data``, then ``"read"`` what the server answers until it closes (or resets),
    ``"shutdown"`` the write side first (a peer that stops), or ``"reset"``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if then == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return b""
        if then == "shutdown":
            s.shutdown(socket.SHUT_WR)
        out = bytearray()
        try:
            while b := s.recv(4096):
                out += b
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset
        return bytes(out)


BAD_INPUT = {
    "plaintext_http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "read", ERROR_SSL, VC_EVENT_ERROR),
    "random_bytes": (payload_of(300, seed=3), "read", ERROR_SSL, VC_EVENT_ERROR),
    "stops_mid_handshake": (30, "shutdown", ERROR_SYSCALL, VC_EVENT_EOS),
    "resets_mid_handshake": (30, "reset", ERROR_SYSCALL, VC_EVENT_EOS),
    # a record header announcing more than comes before the peer's FIN
    "truncated_record": (5 + 100, "shutdown", ERROR_SYSCALL, VC_EVENT_EOS),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_ends_that_connection_only_counted(net, listen, ca, case, caplog) -> None:
    ClosingEcho.ends = []
    _, _, port = listen(ClosingEcho, tls=server_ctx(ca))
    data, then, stat, event = BAD_INPUT[case]
    if isinstance(data, int):
        data = client_hello()[:data]  # the first bytes of a real ClientHello
    answer = send_and_end(port, data, then)
    if stat == ERROR_SSL:
        assert answer[:1] in (b"", b"\x15")  # nothing, or a TLS alert record
    assert wait_until(lambda: tls_stats.get(stat) == 1)
    assert wait_until(lambda: len(ClosingEcho.ends) == 1)
    assert ClosingEcho.ends[0][0] == event
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    with connect(port, client_ctx(ca)) as s:  # the listener serves on
        assert echo_round_trip(s, b"after") == b"after"
    # No traceback: nothing logged at ERROR (a failed turn, a handler that raised).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_renegotiation_attempt_is_refused_and_the_listener_serves_on(net, listen, ca) -> None:
    SSL = pytest.importorskip("OpenSSL.SSL")
    ClosingEcho.ends = []
    _, _, port = listen(ClosingEcho, tls=server_ctx(ca))
    c = SSL.Context(SSL.TLS_CLIENT_METHOD)
    c.set_max_proto_version(SSL.TLS1_2_VERSION)
    c.load_verify_locations(str(ca.pem))
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)  # pyOpenSSL: WantReadError when the socket would block

    def call(fn: Any, *args: Any) -> Any:
        for _ in range(500):
            try:
                return fn(*args)
            except SSL.WantReadError:
                select.select([sock], [], [], 0.01)
        raise TimeoutError(fn)

    refused = False
    try:
        conn = SSL.Connection(c, sock)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        call(conn.do_handshake)
        conn.sendall(b"before")
        assert call(conn.recv, 100) == b"before"
        try:
            assert conn.renegotiate()
            call(conn.do_handshake)
            conn.sendall(b"during")
            call(conn.recv, 100)
        except (SSL.Error, OSError, TimeoutError):
            refused = True
        assert refused or conn.total_renegotiations() == 0
    finally:
        sock.close()
    with connect(port, client_ctx(ca)) as s:
        assert echo_round_trip(s, b"after") == b"after"
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_a_close_sends_close_notify_and_an_abort_does_not(net, listen, ca) -> None:
    vcs: list[Any] = []
    _, _, port = listen(lambda vc: (vcs.append(vc), Echo(vc)), tls=server_ctx(ca))
    for abort in (False, True):
        # Without suppress_ragged_eofs, Python's ssl reads close_notify as b"" and a TCP
        # close without one as SSLEOFError.
        with connect(port, client_ctx(ca), suppress_ragged_eofs=False) as s:
            assert echo_round_trip(s, b"x") == b"x"
            vcs[-1].do_io_close(0 if abort else -1)
            if abort:
                with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):
                    s.recv(10)
            else:
                assert s.recv(10) == b""


def test_accept_options_refuse_a_vc_class_with_tls(net, ca) -> None:
    opts = AcceptOptions(local_address="127.0.0.1", tls=server_ctx(ca), vc_class=UnixNetVConnection)
    with pytest.raises(ValueError, match="AcceptOptions.vc_class cannot be set with tls"):
        opts.validate("accept")


def test_a_tls_connection_cannot_be_spliced(net, listen, ca) -> None:
    from ats_cffi.net.splice import Splice

    errors: list[str] = []

    def on_vc(vc: Any) -> None:  # on the VC's net thread
        try:
            Splice(Continuation(ProxyMutex(), lambda event, data: None), vc)
        except TypeError as exc:
            errors.append(str(exc))
        vc.do_io_close()

    _, acceptor, port = listen(on_vc, tls=server_ctx(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        acceptor.wait()
    assert errors and "TLS connection" in errors[0]


def test_the_continuation_hears_nothing_until_the_handshake_is_done(net, listen, ca) -> None:
    # A plain VC with an empty write VIO gets WRITE_READY at the socket's first write edge;
    # a TLS one's first write edges drive the handshake, and its continuation hears its
    # first event (here WRITE_READY: room to write) only once the handshake is done.
    events: list[int] = []

    def on_vc(vc: Any) -> None:
        buf = MIOBuffer(4096)
        cont = Continuation(ProxyMutex(), lambda event, vio: events.append(event))
        with cont.mutex:  # type: ignore[union-attr]
            vc.do_io_read(cont, 1 << 20, buf)
            vc.do_io_write(cont, 1 << 20, MIOBuffer(4096).alloc_reader())

    _, acceptor, port = listen(on_vc, tls=server_ctx(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with raw:
        acceptor.wait()
        vc = acceptor.vcs[0]
        for _ in range(3):  # passes of the VC's thread: its write edge has been seen
            on_thread(vc.thread, lambda: None)
        assert vc.ssl is not None and vc.tls_turns  # the handshake started, not done
        assert events == []
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_ctx(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        raw.sendall(outgoing.read())
        assert wait_until(lambda: VC_EVENT_WRITE_READY in events)
        vc.do_io_close()


def test_a_short_read_of_an_earlier_turn_does_not_pass_for_drained(net, listen, ca) -> None:
    # The client's Finished and a first message arrive in one read() (short: the socket
    # was drained then), during the handshake, while the continuation reads nothing: the
    # message waits inside OpenSSL. A second message then arrives (its edge comes and goes:
    # no read VIO). When the continuation starts reading, OpenSSL hands over the first
    # from its buffer without a read(): that earlier short read proves nothing now, and
    # the second must be read too.
    vcs: list[Any] = []
    _, acceptor, port = listen(vcs.append, tls=server_ctx(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with raw:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_ctx(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        obj.write(b"first")
        raw.sendall(outgoing.read())  # the Finished and the first message, at once
        acceptor.wait()
        vc = vcs[0]
        assert wait_until(lambda: on_thread(vc.thread, lambda: vc.tls_state == 1))
        obj.write(b"second")
        raw.sendall(outgoing.read())
        assert wait_until(lambda: unread_bytes(vc.fd) > 0)
        readers: list[Reader] = []
        on_thread(vc.thread, lambda: readers.append(Reader(vc, 11)))
        assert wait_until(lambda: readers[0].done.is_set())
        assert bytes(readers[0].got) == b"firstsecond"
        vc.do_io_close()
