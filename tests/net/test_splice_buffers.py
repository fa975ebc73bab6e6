"""What a spliced connection keeps (ats_cffi/_native_splice.c): a pipe holds a buffer only
while bytes wait for its sink; a drained buffer goes back to its net thread's freelist,
where a pipe of the same size takes it again, and the InactivityCop's runs free what no
pipe needed for a whole period. What an idle one costs: the Splice is its VCs'
``splice_end`` (no object per end), its ends are one native array that nothing per thread
lists, the InactivityCop hears only of the ends whose bytes moved, and a buffer still held
when the splice is released goes back to the freelist."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ats_cffi._native import ffi, lib
from ats_cffi.eventsystem import Continuation, ProxyMutex
from ats_cffi.net.splice import Splice
from tests.conftest import wait_until

from .conftest import COP, _listener, client, on_thread, payload_of, recv_exactly

#: The sockets' kernel buffers in the back-pressure tests: far below what the client sends,
#: so that the splice's own buffer must hold the rest.
SMALL_SOCKET_BUFFER = 32768
BIG = 1 << 20


@pytest.fixture
def listen(start_net: Any, fake_clock: Any) -> Iterator[Callable[..., tuple[Any, Any, int]]]:
    """``listen(on_vc)`` on one net thread (every splice shares its freelist), on
    ``fake_clock``: the InactivityCop (and so the trim) runs only when the test advances."""
    yield from _listener(start_net(1, clock=fake_clock))


class EchoOwner(Continuation):
    """Splices each accepted VC to itself (an echo, ``buffer_size`` bytes a pipe), after
    ``setup(vc)``; closes the splice on its end."""

    def __init__(self, buffer_size: int = 65536, setup: Any = None) -> None:
        super().__init__(ProxyMutex())
        self.buffer_size = buffer_size
        self.setup = setup
        self.splices: list[Splice] = []
        self.set_handler(self.handle)

    def on_vc(self, vc: Any) -> None:
        with self.mutex:  # type: ignore[union-attr]
            if self.setup is not None:
                self.setup(vc)
            self.splices.append(Splice(self, vc, buffer_size=self.buffer_size))

    def handle(self, event: int, sp: Any) -> None:
        sp.close()

    def pipe(self) -> tuple[Any, Any]:
        """The only splice's pipe and its net thread, once spliced."""
        assert wait_until(lambda: len(self.splices) == 1, what="the splice")
        sp = self.splices[0]
        (p,) = sp.pipes
        return p, sp.nh.thread


def holds(p: Any) -> int:
    """Unwritten bytes ``p`` holds in its buffer, or -1 if it holds no buffer."""
    return -1 if p.buf == ffi.NULL else int(p.tail - p.head)


def free_buffers(thread: Any) -> int:
    return on_thread(thread, lib.ats_splice_free_buffers)


def small_sndbuf(vc: Any) -> None:
    with socket.socket(fileno=os.dup(vc.fd)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SOCKET_BUFFER)


def small_client(port: int) -> socket.socket:
    """A client whose receive window stays small (set before the connect)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SOCKET_BUFFER)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def back_up(
    c: socket.socket, p: Any, thread: Any, data: bytes, reset_ok: bool = False
) -> tuple[threading.Thread, int]:
    """Send ``data`` (from a thread) without reading the echo, until the pipe keeps bytes
    that the sink did not take in a buffer of its own. Returns the sending thread, and the
    length of the thread's freelist at that moment (read in the same turn of the thread).
    ``reset_ok``: the test closes the splice under the sender, whose sendall then fails."""

    def send() -> None:
        try:
            c.sendall(data)
        except OSError:
            if not reset_ok:
                raise

    t = threading.Thread(target=send, daemon=True)
    t.start()
    seen: list[tuple[int, int]] = []

    def look() -> bool:
        seen.append(on_thread(thread, lambda: (holds(p), lib.ats_splice_free_buffers())))
        return seen[-1][0] > 0

    assert wait_until(look, what="a kept remainder")
    return t, seen[-1][1]


def drain(c: socket.socket, sender: threading.Thread, data: bytes) -> None:
    assert recv_exactly(c, len(data)) == data  # whole and in order
    sender.join(10)
    assert not sender.is_alive()


def test_an_echo_splice_that_carried_a_message_holds_no_buffer(listen: Any) -> None:
    owner = EchoOwner()
    _, acc, port = listen(owner.on_vc)
    with client(port) as c:
        acc.wait()
        p, thread = owner.pipe()
        for n in (1, 3000, 8000):  # each far below what the sockets take at once
            msg = payload_of(n, seed=n)
            c.sendall(msg)
            assert recv_exactly(c, n) == msg
            assert on_thread(thread, lambda: holds(p)) == -1
        # The sink took every read at once: the bytes went through the thread's scratch,
        # and no pipe buffer was ever needed.
        assert free_buffers(thread) == 0
        assert on_thread(thread, lib.ats_splice_scratch_size) == 65536


def test_what_the_sink_cannot_take_waits_in_a_buffer_and_arrives_whole(listen: Any) -> None:
    owner = EchoOwner(setup=small_sndbuf)
    _, acc, port = listen(owner.on_vc)
    with small_client(port) as c:
        acc.wait()
        p, thread = owner.pipe()
        data = payload_of(BIG, seed=11)
        sender, _ = back_up(c, p, thread, data)
        drain(c, sender, data)
        assert on_thread(thread, lambda: (holds(p), p.nread, p.nwritten)) == (-1, BIG, BIG)
        assert free_buffers(thread) == 1  # drained: given back to the freelist


def test_the_freelist_is_reused_by_equal_sizes_and_trimmed_by_the_cop(
    listen: Any, fake_clock: Any
) -> None:
    owner = EchoOwner(setup=small_sndbuf)
    _, acc, port = listen(owner.on_vc)
    with small_client(port) as c:
        acc.wait()
        p, thread = owner.pipe()
        for i in range(2):
            data = payload_of(BIG, seed=20 + i)
            sender, pooled = back_up(c, p, thread, data)
            # The second time, the buffer held is the one the first gave back.
            assert pooled == 0
            drain(c, sender, data)
            assert free_buffers(thread) == 1
        # A pipe of another size does not take it: it gets a buffer of its own.
        owner.buffer_size = 32768
        with small_client(port) as c2:
            acc.wait()
            assert wait_until(lambda: len(owner.splices) == 2, what="the second splice")
            q = owner.splices[1].pipes[0]
            data = payload_of(BIG, seed=30)
            sender, pooled = back_up(c2, q, thread, data)
            assert pooled == 1
            drain(c2, sender, data)
            assert free_buffers(thread) == 2
        # Two cop runs: the first marks what was given back since the previous one, the
        # second frees it, and the scratch no read used since.
        fake_clock.advance(COP)
        assert free_buffers(thread) == 2
        fake_clock.advance(COP)
        assert free_buffers(thread) == 0
        assert on_thread(thread, lib.ats_splice_scratch_size) == 0
        c.sendall(b"still spliced")  # and the pipe reads through a new scratch
        assert recv_exactly(c, 13) == b"still spliced"
        assert on_thread(thread, lambda: holds(p)) == -1


def test_a_size_too_large_for_the_scratch_reads_into_a_pooled_buffer(listen: Any) -> None:
    owner = EchoOwner(buffer_size=2 << 20)
    _, acc, port = listen(owner.on_vc)
    with client(port) as c:
        acc.wait()
        p, thread = owner.pipe()
        msg = payload_of(100000, seed=5)
        c.sendall(msg)
        assert recv_exactly(c, len(msg)) == msg
        assert on_thread(thread, lambda: holds(p)) == -1
        assert on_thread(thread, lib.ats_splice_scratch_size) == 0
        assert free_buffers(thread) == 1


def moved_tokens(thread: Any) -> list[int]:
    """The tokens the pumps of ``thread`` listed since the last call (as the cop takes
    them)."""

    def take() -> list[int]:
        pp = ffi.new("uint64_t **")
        n = lib.ats_splice_moved(pp)
        return [pp[0][i] for i in range(n)]

    return on_thread(thread, take)


def test_the_cop_hears_only_of_the_ends_that_moved_bytes(listen: Any) -> None:
    owner = EchoOwner()
    _, acc, port = listen(owner.on_vc)
    with client(port) as c1, client(port) as c2:
        acc.wait()
        acc.wait()
        c1.sendall(b"1")
        c2.sendall(b"2")
        assert recv_exactly(c1, 1) == b"1" and recv_exactly(c2, 1) == b"2"
        sp1, sp2 = owner.splices
        thread = sp1.nh.thread
        (vc1,), (vc2,) = sp1.vcs, sp2.vcs
        assert vc1.splice_end is sp1 and vc2.splice_end is sp2
        assert sorted(moved_tokens(thread)) == sorted([vc1.ep.token, vc2.ep.token])
        for _ in range(3):  # several messages: listed once
            c2.sendall(b"again")
            assert recv_exactly(c2, 5) == b"again"
        assert moved_tokens(thread) == [vc2.ep.token]
        assert moved_tokens(thread) == []  # both idle: the cop visits neither


def test_a_splice_released_while_holding_bytes_gives_its_buffer_back(listen: Any) -> None:
    owner = EchoOwner(setup=small_sndbuf)
    _, acc, port = listen(owner.on_vc)
    with small_client(port) as c:
        acc.wait()
        p, thread = owner.pipe()
        sender, pooled = back_up(c, p, thread, payload_of(BIG, seed=40), reset_ok=True)
        sp = owner.splices[0]
        on_thread(thread, sp.close)  # the VC is freed: the splice released
        assert sp.vcs[0].fd == -1
        assert free_buffers(thread) == pooled + 1
        assert p.buf == ffi.NULL
        sender.join(10)  # (the close reset the connection: its sendall failed)
        assert not sender.is_alive()


def test_a_tunnel_is_one_splice_for_both_vcs(listen: Any) -> None:
    """Both VCs of a tunnel name the one Splice; its pipes move both ways."""
    vcs: list[Any] = []
    owner = EchoOwner()
    ready = threading.Event()

    def on_vc(vc: Any) -> None:
        vcs.append(vc)
        if len(vcs) == 2:
            with owner.mutex:  # type: ignore[union-attr]
                owner.splices.append(Splice(owner, vcs[0], vcs[1]))
            ready.set()

    _, acc, port = listen(on_vc)
    with client(port) as c1, client(port) as c2:
        assert ready.wait(10)
        (sp,) = owner.splices
        assert sp.vcs == tuple(vcs) and all(vc.splice_end is sp for vc in vcs)
        c1.sendall(b"to two")
        assert recv_exactly(c2, 6) == b"to two"
        c2.sendall(b"to one")
        assert recv_exactly(c1, 6) == b"to one"
        # (counted after the send returned: after the peer may have read them)
        assert wait_until(lambda: sp.transferred() == (6, 6), what="the counts")
