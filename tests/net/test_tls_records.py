"""The sizes of the TLS records an SSLNetVConnection writes (``proxy.config.ssl.
max_record_size``), read off the wire by a client that splits the bytes into records
before Python's ssl module decrypts them."""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import pytest

from ats_cffi.eventsystem import Continuation, MIOBuffer, ProxyMutex
from ats_cffi.eventsystem.codes import VC_EVENT_WRITE_COMPLETE
from ats_cffi.net.tls import ServerContext, tls_config

from .conftest import on_thread, wait_until
from .test_tls_server import client_ctx

#: TLS 1.3's bytes per record on top of the plaintext (the inner content type, the tag).
OVERHEAD = 1 + 16
APPLICATION_DATA = 23


class RawClient:
    """A TLS client over memory BIOs: ``sizes`` lists every record's (type, length)."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.pending = b""
        self.sizes: list[tuple[int, int]] = []
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
                self.feed(self.sock.recv(65536))
        self.sock.sendall(self.out.read())

    def feed(self, data: bytes) -> None:
        assert data, "the server closed the connection"
        self.pending += data
        while len(self.pending) >= 5:
            n = int.from_bytes(self.pending[3:5], "big")
            if len(self.pending) < 5 + n:
                break
            self.sizes.append((self.pending[0], n))
            self.inc.write(self.pending[: 5 + n])
            self.pending = self.pending[5 + n :]

    def read_plaintext(self, want: int) -> None:
        got = 0
        while got < want:
            try:
                got += len(self.obj.read(1 << 16))
                continue
            except ssl.SSLWantReadError:
                pass
            self.feed(self.sock.recv(1 << 16))


class Writer(Continuation):
    """Writes ``send(n)`` bytes to its VC (from the VC's thread); ``done`` after each."""

    def __init__(self, vc: Any) -> None:
        super().__init__(ProxyMutex())
        self.vc = vc
        self.buf = MIOBuffer(32768)
        self.done = threading.Event()
        self.set_handler(self.handle)

    def send(self, n: int) -> None:
        self.done.clear()
        self.buf.write(b"r" * n)
        with self.mutex:  # type: ignore[union-attr]
            self.vc.do_io_write(self, n, self.buf.alloc_reader())

    def handle(self, event: int, vio: Any) -> None:
        if event == VC_EVENT_WRITE_COMPLETE:
            self.done.set()


def test_dynamic_record_sizes_small_first_large_after_a_megabyte_small_after_idle(
    fake_listen, fake_clock, ca
) -> None:
    tls_config.set("proxy.config.ssl.max_record_size", -1)
    leaf = ca.leaf("localhost", "localhost")
    writers: list[Writer] = []
    _, acceptor, port = fake_listen(lambda vc: writers.append(Writer(vc)),
                                    tls=ServerContext.from_files(leaf.cert, leaf.key))  # fmt: skip
    client = RawClient(port, client_ctx(ca))
    try:
        acceptor.wait()
        (w,) = writers
        check_dynamic_sizes(client, w, fake_clock)
    finally:
        client.sock.close()
        for w in writers:
            w.vc.do_io_close()


def check_dynamic_sizes(client: RawClient, w: Writer, fake_clock: Any) -> None:
    start = len(client.sizes)
    first = 1_200_000
    on_thread(w.vc.thread, lambda: w.send(first))
    client.read_plaintext(first)
    assert wait_until(w.done.is_set)
    sent = 0
    small_phase, large_phase = [], []
    for kind, n in client.sizes[start:]:
        if kind != APPLICATION_DATA:
            continue
        (small_phase if sent < 990_000 else large_phase).append(n)
        sent += n - OVERHEAD
    assert max(small_phase) <= 1300 + OVERHEAD  # ATS's small records, up to a megabyte
    assert 16384 + OVERHEAD in large_phase[:40]  # then the largest, within the same write
    # An idle second on the net thread's clock: small records again.
    fake_clock.advance(2.0)
    mark = len(client.sizes)
    on_thread(w.vc.thread, lambda: w.send(50_000))
    client.read_plaintext(50_000)
    again = [n for kind, n in client.sizes[mark:] if kind == APPLICATION_DATA]
    assert again and max(again) <= 1300 + OVERHEAD


@pytest.mark.parametrize(("setting", "expect"), [(0, 16384), (4000, 4000)])
def test_the_largest_records_by_default_and_a_fixed_size_when_set(
    listen, ca, setting, expect
) -> None:
    tls_config.set("proxy.config.ssl.max_record_size", setting)
    leaf = ca.leaf("localhost", "localhost")
    writers: list[Writer] = []
    ctx = ServerContext.from_files(leaf.cert, leaf.key)
    _, acceptor, port = listen(lambda vc: writers.append(Writer(vc)), tls=ctx)
    client = RawClient(port, client_ctx(ca))
    try:
        acceptor.wait()
        (w,) = writers
        mark = len(client.sizes)
        on_thread(w.vc.thread, lambda: w.send(100_000))
        client.read_plaintext(100_000)
        data = [n - OVERHEAD for kind, n in client.sizes[mark:] if kind == APPLICATION_DATA]
        assert max(data) == expect
    finally:
        client.sock.close()
        for w in writers:
            w.vc.do_io_close()
