"""The drain loses no request: SIGTERM while keep-alive clients loop requests on
``ats-cffi http``. Every request a client sent gets its response (the last one says
``Connection: close``); a connection is closed without one only while it is idle, which
a careful client sees (EOF waiting) before it sends. The summary comes after the last
connection closed."""

from __future__ import annotations

import select
import signal
import socket
import threading
import time

import pytest

from tests.conftest import wait_until

from .conftest import parse_summary

CLIENTS = 50
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


class LoopClient:
    """One keep-alive connection sending ``GET /`` after each response until the server
    closes: ``answered`` responses read whole, ``lost`` requests sent whose response never
    came (EOF or a reset instead), ``closed_idle`` when the server closed while it had no
    request out (seen before sending: the keep-alive race a careful client checks)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.answered = 0
        self.lost = 0
        self.sent_bytes = 0
        self.got_bytes = 0
        self.said_close = False
        self.closed_idle = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def server_closed(self) -> bool:
        """EOF (or a reset) already waiting: the server closed the idle connection."""
        if not select.select([self.sock], [], [], 0)[0]:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except ConnectionResetError:
            return True

    def response(self) -> bytes | None:
        """One whole response (head and its Content-Length body), None at EOF/reset."""
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                data = self.sock.recv(4096)
                if not data:
                    return None
                buf += data
                self.got_bytes += len(data)
            head, _, body = buf.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                data = self.sock.recv(4096)
                if not data:
                    return None
                body += data
                self.got_bytes += len(data)
        except ConnectionResetError:
            return None
        assert len(body) == length and body == b"Hello, World!", buf
        return head

    def run(self) -> None:
        try:
            while True:
                if self.server_closed():
                    self.closed_idle = True
                    return
                try:
                    self.sock.sendall(REQUEST)
                    self.sent_bytes += len(REQUEST)
                except (BrokenPipeError, ConnectionResetError):
                    self.lost += 1
                    return
                head = self.response()
                if head is None:
                    self.lost += 1
                    return
                self.answered += 1
                if b"connection: close" in head.lower():
                    self.said_close = True
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.sock.close()


@pytest.mark.parametrize("run", range(3))
def test_sigterm_under_keep_alive_load_answers_every_request_sent(cli, run: int) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0", "--drain-timeout", "10").wait_listening()
    clients = [LoopClient(srv.port) for _ in range(CLIENTS)]
    for c in clients:
        c.thread.start()
    wait_until(lambda: all(c.answered >= 3 for c in clients), what="the load", timeout=20)
    srv.signal(signal.SIGTERM)
    t0 = time.monotonic()
    for c in clients:
        c.thread.join(15)
        assert not c.thread.is_alive()
    assert [c.error for c in clients if c.error] == []
    assert sum(c.lost for c in clients) == 0, [(c.answered, c.lost) for c in clients]
    # Most clients had a request out when the drain began: answered, with a close.
    assert sum(c.said_close for c in clients) + sum(c.closed_idle for c in clients) == CLIENTS
    assert srv.wait(15) == 0
    assert time.monotonic() - t0 < 8  # not the drain timeout
    summary = parse_summary(srv.rest_of_output()[0])
    assert summary["drain"] == "complete"
    assert summary["connections_currently_open"] == "0"
    assert int(summary["incoming_requests"]) == sum(c.answered for c in clients)
    # Taken after the last byte moved: what the server counts is what the clients saw.
    assert int(summary["write_bytes"]) == sum(c.got_bytes for c in clients)
    assert int(summary["read_bytes"]) == sum(c.sent_bytes for c in clients)
