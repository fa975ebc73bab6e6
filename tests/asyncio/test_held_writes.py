"""The writes of a loop pass are held until its end (``ats_cffi/asyncio/dispatch.py``): a
``write`` of ``bytes`` in ``data_received`` reaches the peer after the pass's reads, not
during the callback, and one in a ready callback once the pass's ready callbacks all ran;
every byte still arrives, in order, before a close or a half-close; a ``bytearray``, a
write over the pass's budget and one of ``WRITE_NOW_BYTES`` or more go at once. Over
loopback a ``send`` has queued its bytes at the peer when it returns: a peek of the peer's
socket from inside the callback tells whether the write was sent."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

import ats_cffi.asyncio as ats_asyncio
from ats_cffi.net import stats as st
from ats_cffi.net.nethandler import WRITE_BATCH_BYTES, WRITE_NOW_BYTES


def peek(sock: socket.socket) -> bytes:
    """What ``sock`` has received and not read (b"" when nothing)."""
    try:
        return sock.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


class Replier(asyncio.Protocol):
    """Runs ``act(transport, data, peer)`` in each ``data_received`` and keeps its result."""

    def __init__(self, act: Callable[[Any, bytes, socket.socket], Any]) -> None:
        self.act = act
        self.peer: socket.socket | None = None
        self.seen: list[Any] = []
        self.lost = asyncio.get_running_loop().create_future()
        self.losses = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.seen.append(self.act(self.transport, data, self.peer))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.losses += 1
        if not self.lost.done():
            self.lost.set_result(exc)


def served(act: Callable[[Any, bytes, socket.socket], Any], want: int = 1 << 30) -> Any:
    """Run a server whose protocol does ``act``; one client sends b"ping" and reads ``want``
    bytes, to EOF, or for 2 s (``want`` 0: waits for ``connection_lost`` instead, and a
    little more for a second one). Returns ``(protocol, bytes the client got)``, once it
    checked that nothing reached the loop's exception handler."""

    async def main() -> tuple[Replier, bytes]:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        protos: list[Replier] = []

        def factory() -> Replier:
            protos.append(Replier(act))
            return protos[-1]

        srv = await loop.create_server(factory, "127.0.0.1", 0)
        c = socket.create_connection(srv.sockets[0].getsockname())
        c.setblocking(False)
        got = b""
        try:
            await asyncio.wait_for(_until(lambda: bool(protos)), 5)
            protos[0].peer = c
            await loop.sock_sendall(c, b"ping")
            if not want:
                await asyncio.wait_for(protos[0].lost, 5)
                await asyncio.sleep(0.01)
            while len(got) < want:
                try:
                    chunk = await asyncio.wait_for(loop.sock_recv(c, 1 << 20), 2)
                except TimeoutError:
                    break
                if not chunk:
                    break
                got += chunk
            assert not errors
            return protos[0], got
        finally:
            c.close()
            srv.close()
            await srv.wait_closed()

    return ats_asyncio.run(main())


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.001)


def test_a_write_in_data_received_is_sent_after_the_callback() -> None:
    p, got = served(lambda t, data, peer: (t.write(data.upper()), peek(peer))[1], 4)
    assert p.seen == [b""]  # not sent while the callback ran ...
    assert got == b"PING"  # ... sent at the end of the pass


def test_writes_then_a_close_lose_no_byte_and_keep_their_order() -> None:
    def act(t: Any, data: bytes, peer: socket.socket) -> bytes:
        t.write(b"one ")
        t.write(b"two ")  # the first goes now, in order
        t.writelines([b"three ", data])
        seen = peek(peer)
        t.close()  # sends what is held first
        return seen, peek(peer)

    p, got = served(act)
    assert got == b"one two three ping"
    assert p.seen == [(b"one two three ", b"one two three ping")]


def test_the_buffer_size_sends_what_is_held() -> None:
    def act(t: Any, data: bytes, peer: socket.socket) -> tuple[int, bytes]:
        t.write(data)
        return t.get_write_buffer_size(), peek(peer)

    p, got = served(act, 4)
    assert p.seen == [(0, b"ping")] and got == b"ping"


def test_a_half_close_and_an_abort_come_after_the_bytes_held() -> None:
    p, got = served(lambda t, data, peer: (t.write(data), t.write_eof()), 5)
    assert got == b"ping"
    p, got = served(lambda t, data, peer: (t.write(data), t.abort()))
    assert got == b"ping"


def test_a_bytearray_goes_at_once_and_later_changes_do_not_reach_the_peer() -> None:
    def act(t: Any, data: bytes, peer: socket.socket) -> bytes:
        b = bytearray(data)
        t.write(b)
        b[:] = b"XXXX"
        return peek(peer)

    p, got = served(act, 4)
    assert p.seen == [b"ping"] and got == b"ping"


def test_a_write_over_the_pass_budget_goes_at_once() -> None:
    big = b"b" * (WRITE_BATCH_BYTES + 1)
    p, got = served(lambda t, data, peer: (t.write(big), t.close(), peek(peer))[2])
    assert p.seen[0][:1] == b"b"  # sent (a part at least) in the callback
    assert got == big


@pytest.mark.parametrize("size", [WRITE_NOW_BYTES, WRITE_NOW_BYTES - 1])
def test_a_write_of_write_now_bytes_goes_at_once_a_shorter_one_waits(size: int) -> None:
    # A large write goes out in the callback, its bytes still in the CPU's cache; one byte
    # less is held until the pass's reads are done.
    data = b"w" * size
    p, got = served(lambda t, _, peer: (t.write(data), peek(peer))[1], size)
    assert p.seen == [data if size >= WRITE_NOW_BYTES else b""] and got == data


def test_the_writes_of_ready_callbacks_are_sent_once_they_all_ran() -> None:
    def act(t: Any, data: bytes, peer: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: p_seen.append((t.write(data), peek(peer))[1]))
        loop.call_soon(lambda: p_seen.append(peek(peer)))

    p_seen: list[bytes] = []
    p, got = served(act, 4)
    assert p_seen == [b"", b""] and got == b"ping"


@pytest.mark.parametrize("close", ["close", "abort"])
def test_a_held_write_that_fails_closes_the_transport_once(close: str) -> None:
    # The peer is gone when the held bytes are sent: connection_lost comes once.
    def act(t: Any, data: bytes, peer: socket.socket) -> None:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # a reset
        t.write(data)
        getattr(t, close)()

    p, _ = served(act, 0)
    assert p.losses == 1


def test_a_write_after_a_held_one_that_fails_is_dropped() -> None:
    # The held write is sent first and fails: the connection is lost, and the next write
    # is dropped and counted as asyncio's, not sent.
    def act(t: Any, data: bytes, peer: socket.socket) -> int:
        stats = asyncio.get_running_loop()._net_stats  # type: ignore[attr-defined]
        before = stats[st.CALLS_TO_WRITE_NODATA]
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # a reset
        t.write(b"held")
        t.write(b"dropped")
        t.close()
        return stats[st.CALLS_TO_WRITE_NODATA] - before

    p, _ = served(act, 0)
    assert p.seen == [1] and p.losses == 1
    assert p.transport._core.lost == 2
