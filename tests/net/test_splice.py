"""Splice: bytes moved natively between VCs (ats_cffi/net/splice.py), on real sockets."""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
from typing import Any

import pytest

from ats_cffi.eventsystem import Continuation, ProxyMutex, this_ethread
from ats_cffi.eventsystem.codes import (
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_INACTIVITY_TIMEOUT,
)
from ats_cffi.net import AcceptOptions, net_processor, net_stats
from ats_cffi.net.splice import Splice
from tests.conftest import wait_until

from .conftest import (
    COP,
    OPEN,
    Acceptor,
    client,
    payload_of,
    recv_exactly,
    unacked_bytes,
    unread_bytes,
)


@pytest.fixture
def one_net_thread(start_net: Any) -> Any:
    """One net thread: every accepted VC shares its NetHandler, so any two can be spliced."""
    return start_net(1)


@pytest.fixture
def listen() -> Any:
    """``listen(on_vc)`` → (action, acceptor, port) on the started processor (the tests start
    it, with one net thread); cancelled after."""
    actions = []

    def make(on_vc: Any = None) -> tuple[Any, Any, int]:
        acceptor = Acceptor(on_vc)
        action = net_processor.accept(acceptor, AcceptOptions(local_address="127.0.0.1"))
        actions.append(action)
        return action, acceptor, action.na.port

    yield make
    for a in actions:
        a.cancel()


class Owner(Continuation):
    """Splices what the acceptor hands it: each VC to itself (``pair=False``) or every two
    VCs together. Records the events it gets; closes the splice on EOS/ERROR unless told
    to keep it."""

    def __init__(self, pair: bool = False, buffer_size: int = 65536, close: bool = True) -> None:
        super().__init__(ProxyMutex())
        self.pair = pair
        self.buffer_size = buffer_size
        self.close_on_end = close
        self.waiting: Any = None
        self.splices: list[Splice] = []
        self.events: list[tuple[int, Splice]] = []
        self.times: list[float] = []  # the net thread's clock at each event
        self.errors: list[BaseException] = []
        self.got_event = threading.Event()
        self.setup: Any = None  # called with each VC before it is spliced
        self.set_handler(self.handle)

    def on_vc(self, vc: Any) -> None:
        with self.mutex:  # type: ignore[union-attr]
            try:
                if self.setup is not None:
                    self.setup(vc)
                if not self.pair:
                    self.splices.append(Splice(self, vc, buffer_size=self.buffer_size))
                elif self.waiting is None:
                    self.waiting = vc
                else:
                    a, self.waiting = self.waiting, None
                    self.splices.append(Splice(self, a, vc, buffer_size=self.buffer_size))
            except BaseException as exc:  # surfaced by the test
                self.errors.append(exc)
                vc.do_io_close()

    def handle(self, event: int, sp: Any) -> None:
        self.events.append((event, sp))
        self.times.append(this_ethread().clock())
        self.got_event.set()
        if self.close_on_end:
            sp.close()

    def kinds(self) -> list[int]:
        return [e for e, _ in self.events]


def spliced_pair(listen: Any, **kw: Any) -> tuple[Owner, socket.socket, socket.socket]:
    """Two clients whose server VCs are spliced together (``c1``'s is the splice's ``a``),
    once the splice exists."""
    owner = Owner(pair=True, **kw)
    _, acc, port = listen(owner.on_vc)
    c1 = client(port)
    acc.wait(1)  # accepted first
    c2 = client(port)
    acc.wait(1)
    assert wait_until(lambda: len(owner.splices) == 1)
    return owner, c1, c2


def test_echo_splice_returns_every_byte_then_eos(one_net_thread: Any, listen: Any) -> None:
    owner = Owner()
    _, acc, port = listen(owner.on_vc)
    data = payload_of(1 << 20)
    with client(port) as c:
        acc.wait()
        got = bytearray()

        def reader() -> None:
            while True:
                b = c.recv(65536)
                if not b:
                    return
                got.extend(b)

        t = threading.Thread(target=reader)
        t.start()
        for i in range(0, len(data), 7000):  # odd chunks: partial buffers both ways
            c.sendall(data[i : i + 7000])
        c.shutdown(socket.SHUT_WR)
        t.join(10)
        assert not t.is_alive()
    assert bytes(got) == data  # then EOF: the half-close was passed back
    assert wait_until(lambda: owner.kinds() == [VC_EVENT_EOS])
    sp = owner.events[0][1]
    assert sp.transferred() == (len(data),)
    assert owner.errors == []
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_tunnel_splice_moves_both_ways_and_passes_half_closes(
    one_net_thread: Any, listen: Any
) -> None:
    owner, c1, c2 = spliced_pair(listen)
    with c1, c2:
        up = payload_of(300_000, seed=1)
        down = payload_of(200_000, seed=2)
        results: dict[str, bytes] = {}

        def pump(src: socket.socket, dst: socket.socket, data: bytes, key: str) -> None:
            def read() -> None:
                results[key] = recv_exactly(dst, len(data) + 1)  # +1: must end at EOF

            t = threading.Thread(target=read)
            t.start()
            src.sendall(data)
            src.shutdown(socket.SHUT_WR)
            t.join(10)

        t1 = threading.Thread(target=pump, args=(c1, c2, up, "up"))
        t1.start()
        pump(c2, c1, down, "down")
        t1.join(10)
        assert results["up"] == up
        assert results["down"] == down
    assert wait_until(lambda: owner.kinds() == [VC_EVENT_EOS])
    assert owner.events[0][1].transferred() == (len(up), len(down))
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_half_close_keeps_the_other_direction_open(one_net_thread: Any, listen: Any) -> None:
    owner, c1, c2 = spliced_pair(listen)
    with c1, c2:
        c1.sendall(b"request")
        c1.shutdown(socket.SHUT_WR)
        assert recv_exactly(c2, 8) == b"request"  # then EOF
        for i in range(5):  # the reply direction still works after the half-close
            c2.sendall(b"reply %d;" % i)
            assert recv_exactly(c1, 8) == b"reply %d;" % i
        assert owner.events == []
        c2.shutdown(socket.SHUT_WR)
        assert c1.recv(10) == b""
        assert wait_until(lambda: owner.kinds() == [VC_EVENT_EOS])


def test_slow_sink_stops_the_source_memory_stays_bounded(one_net_thread: Any, listen: Any) -> None:
    owner, c1, c2 = spliced_pair(listen, buffer_size=16384)
    with c1, c2:
        for s in (c1, c2):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        c1.setblocking(False)
        sent = 0
        chunk = b"x" * 65536
        stalled = False
        while sent < 64 << 20:  # c2 does not read
            try:
                sent += c1.send(chunk)
            except BlockingIOError:
                # Stalled once c1 stays unwritable (a kernel wait: 0.3 s of no progress):
                # the kernel buffers and the splice's are full, the source is stopped.
                if not select.select([], [c1], [], 0.3)[1]:
                    stalled = True
                    break
        # Kernel buffers on both sides plus one splice buffer: far below 64 MiB.
        assert stalled, "the source never blocked"
        assert sent < 64 << 20
        c2.settimeout(10)
        got = recv_exactly(c2, sent)  # every byte still arrives once the sink reads
        assert len(got) == sent


def test_bytes_sent_before_the_splice_are_moved(one_net_thread: Any, listen: Any) -> None:
    owner = Owner()
    # Spliced only once the client's bytes are queued in the VC's socket.
    owner.setup = lambda vc: wait_until(lambda: unread_bytes(vc.fd) == 11, what="the bytes")
    _, acc, port = listen(owner.on_vc)
    with client(port) as c:
        c.sendall(b"early bytes")
        acc.wait()
        assert recv_exactly(c, 11) == b"early bytes"


def test_small_budget_yields_between_passes_and_loses_nothing(start_net: Any, listen: Any) -> None:
    start_net(1, **{"proxy.config.net.max_read_per_pass": 4096})
    owner = Owner(buffer_size=65536)
    _, acc, port = listen(owner.on_vc)
    data = payload_of(2 << 20, seed=3)
    with client(port) as c:
        acc.wait()
        got = bytearray()
        t = threading.Thread(target=lambda: got.extend(recv_exactly(c, len(data))))
        t.start()
        c.sendall(data)
        t.join(10)
        assert bytes(got) == data


def test_reset_by_peer_is_an_error(one_net_thread: Any, listen: Any) -> None:
    owner, c1, c2 = spliced_pair(listen)
    with c2:
        c1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c1.sendall(b"a" * 1000)
        assert recv_exactly(c2, 1000) == b"a" * 1000
        c1.close()  # RST
        assert wait_until(lambda: owner.events)
        event, sp = owner.events[0]
        assert event in (VC_EVENT_ERROR, VC_EVENT_EOS)
        if event == VC_EVENT_ERROR:
            assert sp.lerrno in (errno.ECONNRESET, errno.EPIPE)
            assert sp.error_vc is not None
        assert c2.recv(10) == b""  # the splice closed the other side too
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_inactivity_timeout_reaches_the_owner_and_activity_defers_it(
    start_net: Any, fake_clock: Any, listen: Any
) -> None:
    # On the fake clock: the cop runs every COP; it sees the bytes the splice moved since
    # its last run and pushes the deadline from there.
    start_net(1, clock=fake_clock)
    owner = Owner()
    owner.setup = lambda vc: vc.set_inactivity_timeout(0.25)
    _, acc, port = listen(owner.on_vc)
    with client(port) as c:
        acc.wait()
        for _ in range(8):  # active for 0.5 s: twice the timeout
            c.sendall(b"ping")
            assert recv_exactly(c, 4) == b"ping"
            fake_clock.tick(COP, COP)
        assert owner.events == []
        quiet_from = fake_clock.now  # the cop's last run saw the last ping
        fake_clock.tick(0.25, COP)
        assert owner.events == [], "fired before 0.25 s without a byte"
        fake_clock.tick(COP, COP)
        assert owner.kinds() == [VC_EVENT_INACTIVITY_TIMEOUT]
        assert owner.times == [quiet_from + 0.25 + COP]
        assert c.recv(10) == b""  # the owner closed it


def test_closing_a_spliced_vc_directly_stops_the_splice(one_net_thread: Any, listen: Any) -> None:
    owner, c1, c2 = spliced_pair(listen)
    with c1, c2:
        sp = owner.splices[0]
        c1.sendall(b"hello")
        assert recv_exactly(c2, 5) == b"hello"
        a = sp.vcs[0]
        with owner.mutex:  # type: ignore[union-attr]
            a.do_io_close()  # from the test thread: freed on the net thread
        assert c1.recv(10) == b""
        assert sp.stopped
        c2.sendall(b"into the void")  # no write may reach a's (closed, maybe reused) fd
        with owner.mutex:  # type: ignore[union-attr]
            sp.close()
        try:
            assert c2.recv(10) == b""
        except ConnectionResetError:
            pass  # closed with those bytes unread: the kernel resets
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_stats_count_the_native_reads_and_writes(one_net_thread: Any, listen: Any) -> None:
    owner = Owner()
    _, acc, port = listen(owner.on_vc)
    with client(port) as c:
        acc.wait()
        c.sendall(b"z" * 5000)
        assert recv_exactly(c, 5000) == b"z" * 5000
        c.shutdown(socket.SHUT_WR)
        assert c.recv(1) == b""
    assert wait_until(lambda: owner.events)
    assert net_stats.get("proxy.process.net.read_bytes") >= 5000
    assert net_stats.get("proxy.process.net.write_bytes") >= 5000
    assert net_stats.get("proxy.process.net.calls_to_read") >= 2  # the data, then EOF


def test_shutdown_with_live_splices_leaks_nothing(start_net: Any, listen: Any) -> None:
    start_net(1)
    owner, c1, c2 = spliced_pair(listen)
    with c1, c2:
        c1.sendall(b"x")
        assert recv_exactly(c2, 1) == b"x"
    # The fixture shuts the processor down with the splice live; the fd/thread check of
    # the autouse fixture fails the test on any leak.


def test_bad_arguments(one_net_thread: Any, listen: Any) -> None:
    results: list[Any] = []
    owner = Owner()

    def setup(vc: Any) -> None:
        for args, kw in (
            (("not a continuation", vc), {}),
            ((owner, "not a vc"), {}),
            ((owner, vc, "not a vc"), {}),
            ((owner, vc), {"buffer_size": 10}),
            ((owner, vc), {"buffer_size": 1.5}),
        ):
            try:
                Splice(*args, **kw)
            except (TypeError, ValueError) as exc:
                results.append(type(exc))
        sp = Splice(owner, vc)
        try:
            Splice(owner, vc)
        except RuntimeError as exc:
            results.append(str(exc))
        sp.close()
        raise StopIteration  # the Owner records it and leaves the VC closed

    owner.setup = setup
    _, acc, port = listen(owner.on_vc)
    with client(port) as c:
        acc.wait()
        assert c.recv(10) == b""
    assert results[:5] == [TypeError, TypeError, TypeError, ValueError, TypeError]
    assert "already spliced" in results[5]


def test_splice_off_the_net_thread_is_refused(one_net_thread: Any, listen: Any) -> None:
    vcs: list[Any] = []
    _, acc, port = listen(vcs.append)
    with client(port):
        acc.wait()
        owner = Owner()
        with pytest.raises(RuntimeError, match="net thread"):
            Splice(owner, vcs[0])
        vcs[0].do_io_close()


def _fail_registration(vc: Any, err: int) -> None:
    """What ``PollDescriptor.flush`` does when the deferred EPOLL_CTL_ADD of ``vc`` fails
    (ENOMEM cannot be provoked on demand): the queued ADD is gone, the failure recorded."""
    pd = vc.nh.pd
    assert pd.pending.pop(vc.fd, None) is not None  # queued in NET_EVENT_ACCEPT
    pd.failed.append((vc.fd, vc.ep.token, err))


def test_a_failed_registration_of_a_spliced_vc_is_an_error(
    one_net_thread: Any, listen: Any
) -> None:
    owner = Owner()

    def on_vc(vc: Any) -> None:
        with owner.mutex:  # type: ignore[union-attr]
            owner.splices.append(Splice(owner, vc))  # its MOD edits the queued ADD
            _fail_registration(vc, errno.ENOMEM)

    _, acc, port = listen(on_vc)
    with client(port) as c:
        acc.wait()
        assert wait_until(lambda: owner.events)
        event, sp = owner.events[0]
        assert event == VC_EVENT_ERROR and sp.lerrno == errno.ENOMEM
        assert c.recv(10) == b""  # the owner closed it
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_a_failed_registration_is_an_error_to_the_reader(one_net_thread: Any, listen: Any) -> None:
    from ats_cffi.eventsystem import INT64_MAX, MIOBuffer

    events: list[tuple[int, int]] = []
    got = threading.Event()

    class Reader(Continuation):
        def __init__(self, vc: Any) -> None:
            super().__init__(ProxyMutex())
            self.vc = vc
            self.set_handler(self.handle)
            vc.do_io_read(self, INT64_MAX, MIOBuffer(4096))
            _fail_registration(vc, errno.ENOMEM)

        def handle(self, event: int, vio: Any) -> None:
            events.append((event, self.vc.lerrno))
            self.vc.do_io_close()
            got.set()

    _, acc, port = listen(Reader)
    with client(port) as c:
        acc.wait()
        assert got.wait(5)
        assert events == [(VC_EVENT_ERROR, errno.ENOMEM)]
        assert c.recv(10) == b""
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_many_clients_with_bad_peers_lose_no_byte_and_leak_nothing(
    one_net_thread: Any, listen: Any
) -> None:
    """60 echo clients at once (bounded: each sends at most 256 KiB, the test 20 s): a third
    half-close and must get every byte back then EOF, a third read everything and close, a
    third reset the connection mid-stream. The server stays up and every VC is freed."""
    import random

    owner = Owner(buffer_size=8192)
    _, acc, port = listen(owner.on_vc)
    rng = random.Random(11)
    failures: list[str] = []

    def run(i: int) -> None:
        kind = i % 3
        data = payload_of(rng.randint(1, 256 * 1024), seed=i)
        try:
            with client(port, timeout=20) as c:
                if kind == 2:  # a bad peer: some bytes (they fit the buffers), then RST
                    c.sendall(data[:16384])
                    try:  # mid-stream: the bytes are at the server when the reset comes
                        wait_until(lambda: unacked_bytes(c) == 0, what="the bytes acknowledged")
                    except AssertionError as exc:
                        failures.append(f"client {i}: {exc}")
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                got = bytearray()
                errors: list[BaseException] = []

                def reader() -> None:
                    try:
                        while len(got) < len(data):
                            b = c.recv(65536)
                            if not b:
                                return
                            got.extend(b)
                    except OSError as exc:
                        errors.append(exc)

                t = threading.Thread(target=reader)
                t.start()
                c.sendall(data)
                if kind == 0:
                    c.shutdown(socket.SHUT_WR)
                t.join(20)
                if errors or bytes(got) != data:
                    failures.append(f"client {i}: {len(got)} of {len(data)} bytes, {errors}")
                elif kind == 0 and c.recv(1) != b"":
                    failures.append(f"client {i}: no EOF after the echo")
        except OSError as exc:
            failures.append(f"client {i}: {exc!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert owner.errors == []
    # Every splice ended (EOS, or ERROR for the resets; the "read and close" clients end
    # with EOS or a reset too) and was closed by its owner. A client that reset may be done
    # before the server accepted it (the reset connection waits in the backlog): the open
    # count alone can be 0 before its splice exists, so both are waited for.
    assert wait_until(lambda: len(owner.events) == 60 and net_stats.get(OPEN) == 0, timeout=10)
    assert len(owner.events) == 60
