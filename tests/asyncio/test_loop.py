"""The asyncio loop on the net core (ats_cffi.asyncio): running, waking, readers and
writers with asyncio's level-triggered meaning, closing with transports open."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

import ats_cffi.asyncio as ats_asyncio
from ats_cffi.asyncio import Loop
from ats_cffi.asyncio.transport import VCTransport


def test_runner_and_run_use_the_loop() -> None:
    async def main() -> type:
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=ats_asyncio.new_event_loop) as runner:
        assert runner.run(main()) is Loop
    assert ats_asyncio.run(main()) is Loop
    with pytest.raises(ValueError, match="coroutine"):
        ats_asyncio.run(main)  # type: ignore[arg-type]


def test_policy_makes_loops() -> None:
    policy = ats_asyncio.EventLoopPolicy()
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, Loop)
    finally:
        loop.close()


def test_call_soon_threadsafe_wakes_the_loop_through_the_eventfd() -> None:
    async def main(loop: Loop) -> int:
        fut = loop.create_future()
        before = loop._ethread.signal_count
        t = threading.Thread(target=loop.call_soon_threadsafe, args=(fut.set_result, 7))
        t.start()
        value = await asyncio.wait_for(fut, 10)
        t.join()
        assert loop._ethread.signal_count > before
        return value  # type: ignore[no-any-return]

    loop = ats_asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main(loop)) == 7
    finally:
        loop.close()


def test_add_reader_is_level_triggered() -> None:
    # One byte read per callback: with an edge-triggered registration the second and third
    # bytes would wait for a new edge that never comes.
    a, b = socket.socketpair()
    a.setblocking(False)
    got: list[bytes] = []
    loop = ats_asyncio.new_event_loop()
    try:
        done = loop.create_future()

        def on_readable() -> None:
            got.append(a.recv(1))
            if len(got) == 3:
                loop.remove_reader(a)
                done.set_result(None)

        loop.add_reader(a, on_readable)
        b.sendall(b"xyz")
        loop.run_until_complete(asyncio.wait_for(done, 10))
        assert got == [b"x", b"y", b"z"]
        assert not loop.remove_reader(a)
    finally:
        loop.close()
        a.close()
        b.close()


def test_add_writer_and_modify() -> None:
    a, b = socket.socketpair()
    loop = ats_asyncio.new_event_loop()
    try:
        calls: list[str] = []
        done = loop.create_future()

        def on_writable() -> None:
            calls.append("w")
            loop.remove_writer(a)
            done.set_result(None)

        loop.add_reader(a, calls.append, "r")  # registered for read first, then modified
        loop.add_writer(a, on_writable)
        loop.run_until_complete(asyncio.wait_for(done, 10))
        assert calls == ["w"]
        assert loop.remove_reader(a)
    finally:
        loop.close()
        a.close()
        b.close()


def test_sock_calls_over_the_selector() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with a, b:
            send = asyncio.ensure_future(loop.sock_sendall(a, b"hello" * 100_000))
            out = bytearray()
            while len(out) < 500_000:
                out += await loop.sock_recv(b, 65536)
            await send
            assert out == b"hello" * 100_000
            return bytes(out[:5])

    assert ats_asyncio.run(main()) == b"hello"


def test_debug_mode_refuses_a_call_from_another_thread() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[BaseException] = []

        def other() -> None:
            try:
                loop.call_soon(print)
            except RuntimeError as exc:
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors and "thread" in str(errors[0])

    ats_asyncio.run(main(), debug=True)


def test_closing_the_loop_closes_open_transports() -> None:
    # conftest's no_leaks checks that no fd and no thread is left.
    loop = ats_asyncio.new_event_loop()
    server_side: list[asyncio.Transport] = []

    class Keep(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            server_side.append(transport)  # type: ignore[arg-type]

    async def main() -> asyncio.Transport:
        srv = await loop.create_server(Keep, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        while not server_side:
            await asyncio.sleep(0.01)
        srv.close()
        return tr  # type: ignore[return-value]

    client = loop.run_until_complete(main())
    assert isinstance(client, VCTransport)
    assert isinstance(server_side[0], VCTransport)
    loop.close()
    assert client.get_extra_info("socket").fileno() == -1
    assert loop.is_closed()


def test_closing_the_loop_retires_its_stat_blocks() -> None:
    # Compiled, a NetHandler's stat block field is read back as a new object each time:
    # retire() found nothing and each closed loop left its two blocks registered.
    from ats_cffi.net.stats import net_stats, tls_stats

    before = len(net_stats._blocks), len(tls_stats._blocks)
    for _ in range(3):
        loop = ats_asyncio.new_event_loop()
        assert len(net_stats._blocks) == before[0] + 1
        loop.close()
    assert (len(net_stats._blocks), len(tls_stats._blocks)) == before
