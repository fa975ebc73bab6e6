"""Close semantics (DESIGN.md sections 5 and 10): ``do_io_close`` from a handler or another
thread, and what a peer that resets or half-closes gets."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ats_cffi.eventsystem import INT64_MAX, Continuation, MIOBuffer, ProxyMutex
from ats_cffi.eventsystem.codes import (
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_READ_COMPLETE,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
)
from ats_cffi.net import net_stats
from ats_cffi.net.codes import IO_SHUTDOWN_WRITE
from ats_cffi.net.config import SOCK_OPT_LINGER_ON, SOCK_OPT_NO_DELAY
from tests.conftest import settle
from tests.net.conftest import (
    OPEN,
    Echo,
    client,
    payload_of,
    recv_exactly,
    reset_by_peer,
    unacked_bytes,
    wait_until,
)

#: SO_LINGER on, 0 s: close() sends RST instead of FIN.
RESET = struct.pack("ii", 1, 0)


def inode_of(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def peer_sees_close(s: socket.socket, timeout: float = 2.0) -> bool:
    """True when ``s`` reads EOF or a reset (a close with unread data sends RST)."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


class Sink(Continuation):
    """Reads its VC into ``data`` (unless ``hold``) and records every event; closes on
    EOS/ERROR."""

    def __init__(self, vc: Any, block_size: int = 4096, hold: bool = False) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.buf = MIOBuffer(block_size)
        self.reader = self.buf.alloc_reader()
        self.data = bytearray()
        self.events: list[int] = []
        self.hold = hold
        self.lerrno = 0
        self.set_handler(self.handle)
        self.vio = vc.do_io_read(self, INT64_MAX, self.buf)

    def handle(self, event: int, vio: Any) -> None:
        self.events.append(event)
        if event in (VC_EVENT_READ_READY, VC_EVENT_READ_COMPLETE) and not self.hold:
            self.data += self.reader.read()
        elif event in (VC_EVENT_EOS, VC_EVENT_ERROR):
            self.lerrno = self.vc.lerrno
            self.vc.do_io_close()

    def resume(self) -> None:
        with self.mutex:
            self.data += self.reader.read()
            self.hold = False
            self.vio.reenable()


class CloseInHandler(Continuation):
    """Closes its VC inside the first READ_READY, with bytes still waiting in the socket."""

    def __init__(self, vc: Any) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.events: list[int] = []
        self.fd = -1
        self.inode: int | None = None
        self.open_in_handler = False
        self.open_after_return: bool | None = None
        self.checked = threading.Event()
        self.set_handler(self.handle)
        vc.do_io_read(self, INT64_MAX, MIOBuffer(16))  # 16 bytes fill it: more stay queued

    def handle(self, event: int, vio: Any) -> None:
        self.events.append(event)
        if self.fd < 0:
            self.fd = self.vc.fd
            self.inode = inode_of(self.fd)
            self.vc.do_io_close()
            self.open_in_handler = self.vc.fd == self.fd and inode_of(self.fd) == self.inode
            # Runs on this thread right after the current pass, i.e. after we returned.
            self.vc.thread.schedule_imm(Continuation(None, self.after_return))

    def after_return(self, event: int, e: Any) -> None:
        self.open_after_return = self.vc.fd >= 0 or inode_of(self.fd) == self.inode
        self.checked.set()


def test_close_inside_handler_delivers_no_further_event_and_closes_fd_after_return(net, listen):
    conts: list[CloseInHandler] = []
    _, acceptor, port = listen(on_vc=lambda vc: conts.append(CloseInHandler(vc)))
    with client(port) as c:
        c.sendall(payload_of(1000))
        acceptor.wait()
        cont = conts[0]
        assert cont.checked.wait(2.0)
        assert cont.open_in_handler, "the fd must stay valid while the handler runs"
        assert cont.open_after_return is False, "the fd must be closed once it returned"
        assert peer_sees_close(c)
        try:  # more data and an EOF would be events on an open VC
            c.sendall(b"more")
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        # Once the server's kernel answered them with a reset, and the net threads ran
        # their passes, any event they could cause would have come.
        wait_until(lambda: reset_by_peer(c), what="the closed socket's reset")
        settle(net.netthreads)
    assert cont.events == [VC_EVENT_READ_READY]
    assert cont.vc.closed and cont.vc.fd == -1
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_close_from_another_thread_closes_fd_and_no_event_follows(net, listen):
    sinks: list[Sink] = []
    _, acceptor, port = listen(on_vc=lambda vc: sinks.append(Sink(vc)))
    clients = [client(port) for _ in range(4)]
    stop = threading.Event()

    def stream(s: socket.socket) -> None:
        try:
            while not stop.is_set():
                s.sendall(b"s" * 16384)
        except OSError:
            pass  # the server closed: reset or broken pipe

    streamers = [threading.Thread(target=stream, args=(s,)) for s in clients[:2]]
    try:
        acceptor.wait(4)
        for t in streamers:
            t.start()
        assert wait_until(lambda: sum(len(s.data) > 0 for s in sinks) >= 2)
        at_close = []
        for sink in sinks:
            with sink.mutex:  # no handler runs while we hold it
                sink.vc.do_io_close()
                at_close.append(len(sink.events))
        assert wait_until(lambda: all(s.vc.fd == -1 for s in sinks), timeout=2.0)
        assert wait_until(lambda: net_stats.get(OPEN) == 0, timeout=2.0)
        for s in clients[2:]:
            assert peer_sees_close(s)
        # The streamers end on their peer's reset: nothing they sent can reach a VC now.
        wait_until(lambda: not any(t.is_alive() for t in streamers), what="the streamers")
        settle(net.netthreads)
        assert [len(s.events) for s in sinks] == at_close
    finally:
        stop.set()
        for t in streamers:
            t.join(5.0)
        for s in clients:
            s.close()


def test_concurrent_closes_from_several_threads_free_each_vc_once(net, listen):
    _, acceptor, port = listen(on_vc=lambda vc: Sink(vc))
    clients = [client(port) for _ in range(8)]
    try:
        acceptor.wait(8)
        assert wait_until(lambda: net_stats.get(OPEN) == 8)
        start = threading.Barrier(4)

        def close_all() -> None:
            start.wait()
            for vc in acceptor.vcs:
                vc.do_io_close()

        closers = [threading.Thread(target=close_all) for _ in range(4)]
        for t in closers:
            t.start()
        for t in closers:
            t.join(5.0)
        assert wait_until(lambda: all(vc.fd == -1 for vc in acceptor.vcs), timeout=2.0)
        settle(net.netthreads)  # a second free would be queued there
        assert net_stats.get(OPEN) == 0, "each VC is counted closed exactly once"
        for s in clients:
            assert peer_sees_close(s)
    finally:
        for s in clients:
            s.close()


def test_peer_reset_delivers_every_received_byte_then_eos_or_econnreset(net, listen):
    sinks: list[Sink] = []
    _, acceptor, port = listen(on_vc=lambda vc: sinks.append(Sink(vc, block_size=8192, hold=True)))
    payload = payload_of(50_000)
    with client(port) as c:
        c.sendall(payload)
        acceptor.wait()
        sink = sinks[0]
        # The VC holds one block and leaves the rest in the socket; then the peer resets.
        assert wait_until(lambda: sink.events and not sink.vc.read.enabled)
        # Every byte is in the server's receive queue before the reset (the reset drops
        # what is still in flight, which no VC could be blamed for losing).
        wait_until(lambda: unacked_bytes(c) == 0, what="the payload acknowledged")
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    wait_until(lambda: reset_by_peer(sink.vc.fd), what="the reset at the server's socket")
    sink.resume()
    terminal = (VC_EVENT_EOS, VC_EVENT_ERROR)
    assert wait_until(lambda: sink.events[-1] in terminal, timeout=2.0)
    settle(net.netthreads)  # a second terminal event would have come by now
    assert len(bytes(sink.data)) == len(payload)
    assert bytes(sink.data) == payload, "nothing received may be dropped"
    assert sum(e in terminal for e in sink.events) == 1
    assert sink.events[-1] in terminal
    if sink.events[-1] == VC_EVENT_ERROR:
        assert sink.lerrno == errno.ECONNRESET
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


class Writer(Continuation):
    """Writes ``n`` bytes to its VC; records events and closes on ERROR."""

    def __init__(self, vc: Any, n: int) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.buf = MIOBuffer(65536)
        self.buf.write(b"w" * n)
        self.events: list[int] = []
        self.lerrno = 0
        self.set_handler(self.handle)
        vc.do_io_write(self, n, self.buf.alloc_reader())

    def handle(self, event: int, vio: Any) -> None:
        self.events.append(event)
        if event == VC_EVENT_ERROR:
            self.lerrno = self.vc.lerrno
            self.vc.do_io_close()


def test_peer_reset_while_writing_gives_the_writer_vc_event_error(listen):
    writers: list[Writer] = []
    _, acceptor, port = listen(on_vc=lambda vc: writers.append(Writer(vc, 16 << 20)))
    with client(port) as c:
        acceptor.wait()
        w = writers[0]
        # The peer reads nothing: the server's socket fills and the write waits for an edge
        # (it saw EAGAIN: no longer triggered).
        wait_until(
            lambda: w.vc.write.vio.ndone > 0 and not w.vc.write.triggered,
            what="the server's socket to fill",
        )
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    assert wait_until(lambda: VC_EVENT_ERROR in w.events, timeout=2.0)
    assert w.lerrno in (errno.ECONNRESET, errno.EPIPE)
    assert VC_EVENT_WRITE_COMPLETE not in w.events
    assert w.events[-1] == VC_EVENT_ERROR
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


class ReplyAfterEOS(Continuation):
    """Reads until EOS, then writes everything it read back and closes when written."""

    def __init__(self, vc: Any) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.buf = MIOBuffer(4096)
        self.reader = self.buf.alloc_reader()
        self.data = bytearray()
        self.events: list[int] = []
        self.len_at_eos = -1
        self.set_handler(self.handle)
        vc.do_io_read(self, INT64_MAX, self.buf)

    def handle(self, event: int, vio: Any) -> None:
        self.events.append(event)
        if event == VC_EVENT_READ_READY:
            self.data += self.reader.read()
        elif event == VC_EVENT_EOS:
            self.len_at_eos = len(self.data)
            out = MIOBuffer(4096)
            out.write(bytes(self.data))
            self.vc.do_io_write(self, len(self.data), out.alloc_reader())
        elif event in (VC_EVENT_WRITE_COMPLETE, VC_EVENT_ERROR):
            self.vc.do_io_close()


def test_peer_half_close_gives_eos_after_all_data_and_the_vc_can_still_write(listen):
    conts: list[ReplyAfterEOS] = []
    _, acceptor, port = listen(on_vc=lambda vc: conts.append(ReplyAfterEOS(vc)))
    payload = payload_of(300_000)
    with client(port) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        acceptor.wait()
        reply = recv_exactly(c, len(payload))
        assert c.recv(1) == b"", "the server closes after its reply"
    cont = conts[0]
    assert reply == payload
    assert cont.len_at_eos == len(payload)
    assert cont.events.count(VC_EVENT_EOS) == 1
    assert VC_EVENT_ERROR not in cont.events
    assert cont.events[-1] == VC_EVENT_WRITE_COMPLETE
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_shutdown_of_the_write_side_sends_eof_to_the_peer_and_no_event(listen):
    sinks: list[Sink] = []
    _, acceptor, port = listen(on_vc=lambda vc: sinks.append(Sink(vc)))
    with client(port) as c:
        acceptor.wait()
        sink = sinks[0]
        with sink.mutex:
            sink.vc.do_io_shutdown(IO_SHUTDOWN_WRITE)
        assert c.recv(1) == b""
        c.sendall(b"still reading")
        assert wait_until(lambda: bytes(sink.data) == b"still reading")
        assert all(e == VC_EVENT_READ_READY for e in sink.events)
        with sink.mutex:
            sink.vc.do_io_close()
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


class Raiser(Continuation):
    def __init__(self, vc: Any) -> None:
        super().__init__(ProxyMutex())
        self.calls = 0
        self.set_handler(self.handle)
        vc.do_io_read(self, INT64_MAX, MIOBuffer(4096))

    def handle(self, event: int, vio: Any) -> None:
        self.calls += 1
        raise RuntimeError("handler bug")


def test_handler_that_raises_gets_its_vc_closed_and_the_net_thread_carries_on(listen):
    roles: list[Callable[[Any], Any]] = [Raiser, Echo]
    conts: list[Any] = []
    _, acceptor, port = listen(on_vc=lambda vc: conts.append(roles.pop(0)(vc)))
    with client(port) as bad:
        bad.sendall(b"boom")
        acceptor.wait()
        assert peer_sees_close(bad)
    assert conts[0].calls == 1
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    with client(port) as good:
        good.sendall(b"still alive")
        assert recv_exactly(good, 11) == b"still alive"


class CloseOther(Continuation):
    """Reads its VC without consuming; at its first ``READ_READY`` it meets the other
    ``CloseOther`` at ``barrier`` and closes the other one's VC (a VC of another net thread,
    whose mutex that thread holds at the same moment)."""

    def __init__(self, vc: Any, barrier: threading.Barrier) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.barrier = barrier
        self.other: CloseOther | None = None
        self.closed_other = threading.Event()
        self.events: list[int] = []
        self.buf = MIOBuffer(4096)
        self.buf.alloc_reader()
        self.set_handler(self.handle)

    def start(self) -> None:
        with self.mutex:
            self.vc.do_io_read(self, INT64_MAX, self.buf)

    def handle(self, event: int, vio: Any) -> None:
        self.events.append(event)
        if event == VC_EVENT_READ_READY and not self.closed_other.is_set():
            try:
                self.barrier.wait(2.0)
            except threading.BrokenBarrierError:
                return
            assert self.other is not None
            self.other.vc.do_io_close()
            self.closed_other.set()


def test_two_net_threads_closing_each_others_vc_from_handlers_do_not_deadlock(net, listen):
    # Each handler holds its own mutex and closes a VC whose mutex the other net thread
    # holds: waiting for it would deadlock both threads (DESIGN 4: a net thread never waits
    # for another thread's lock). An accept thread deals the VCs to the net threads in turn.
    _, acceptor, port = listen(accept_threads=1)
    clients = [client(port) for _ in range(6)]
    try:
        acceptor.wait(6)
        by_thread: dict[Any, Any] = {}
        for vc in acceptor.vcs:
            by_thread.setdefault(vc.nh, vc)
        assert len(by_thread) == 2, "the accepted VCs are spread over both net threads"
        vc1, vc2 = by_thread.values()
        barrier = threading.Barrier(2)
        a, b = CloseOther(vc1, barrier), CloseOther(vc2, barrier)
        a.other, b.other = b, a
        a.start()
        b.start()
        # The net threads hand over their VCs in any order: pair them by port.
        by_port = {s.getsockname()[1]: s for s in clients}
        s1 = by_port[vc1.get_remote_addr()[1]]
        s2 = by_port[vc2.get_remote_addr()[1]]
        s1.sendall(b"x")
        s2.sendall(b"y")
        assert a.closed_other.wait(5.0) and b.closed_other.wait(5.0), "a net thread hung"
        assert wait_until(lambda: vc1.fd == -1 and vc2.fd == -1, timeout=2.0)
        assert peer_sees_close(s1) and peer_sees_close(s2)
        n1, n2 = len(a.events), len(b.events)
        s1.sendall(b"more")  # a closed VC delivers nothing
        wait_until(lambda: reset_by_peer(s1), what="the closed socket's reset")
        settle(net.netthreads)
        assert (len(a.events), len(b.events)) == (n1, n2)
        # Both net threads still serve: the remaining VCs are closed from here.
        for vc in acceptor.vcs:
            vc.do_io_close()
        assert wait_until(lambda: net_stats.get(OPEN) == 0, timeout=2.0)
    finally:
        for s in clients:
            s.close()


@pytest.mark.parametrize("linger", [False, True])
def test_a_closed_vc_s_socket_is_closed_with_its_linger_option(net, listen, linger: bool):
    # A VC closes its socket with the GIL held, unless NetVCOptions set SO_LINGER (a close
    # that may wait): both close it, and SO_LINGER 0 s makes the close a reset.
    flags = SOCK_OPT_NO_DELAY | (SOCK_OPT_LINGER_ON if linger else 0)
    sinks: list[Sink] = []
    _, acceptor, port = listen(
        on_vc=lambda vc: sinks.append(Sink(vc)),
        sockopt_flags=flags,  # (linger_seconds: 0 by default)
    )
    with client(port) as c:
        c.sendall(b"x")
        c.shutdown(socket.SHUT_WR)  # EOS: the Sink closes its VC
        acceptor.wait()
        c.settimeout(2.0)
        if linger:
            with pytest.raises(ConnectionResetError):
                c.recv(16)
        else:
            assert c.recv(16) == b""
    assert wait_until(lambda: sinks[0].vc.fd == -1 and net_stats.get(OPEN) == 0)
    assert sinks[0].data == b"x" and sinks[0].events[-1] == VC_EVENT_EOS
