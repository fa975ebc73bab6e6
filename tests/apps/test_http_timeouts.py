"""The http service's timeouts on real connections: a request that stalls, or trickles in,
is closed after the transaction timeouts; between requests only the idle one applies.

In-process (``net_processor`` with one net thread), on the fake clock: the InactivityCop runs
every ``COP`` of it, and each test steps the clock to a timeout's deadline (the connection
still open) and past it (closed)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from ats_cffi.apps.http import HttpService
from ats_cffi.apps.service import ListenSpec
from tests.conftest import FakeClock
from tests.net.conftest import COP, start_net, unacked_bytes, wait_until  # noqa: F401

from .test_http import HELLO, _read_response

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def serve(
    start_net: Callable[..., Any],  # noqa: F811
    clock: FakeClock,
    **timeouts: float,
) -> tuple[HttpService, int]:
    start_net(1, clock=clock)
    service = HttpService(**timeouts)
    return service, service.listen(ListenSpec("127.0.0.1", 0, 0, 0))


def send_and_settle(s: socket.socket, data: bytes, clock: FakeClock) -> None:
    """Send ``data`` and return once the server has taken it (in its socket, then a pass
    of its net thread): its activity is stamped with the clock's current reading."""
    s.sendall(data)
    wait_until(lambda: unacked_bytes(s) == 0, what="the bytes acknowledged")
    clock.settle()


def closed_by_server(s: socket.socket, wait: bool = False) -> bool:
    """True if the server has closed ``s`` (EOF or reset), False while it is open; with
    ``wait``, reads until the close comes (the socket's timeout bounds it)."""
    s.setblocking(wait)
    if wait:
        s.settimeout(5)
    try:
        return s.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.settimeout(5)


@pytest.mark.parametrize(
    ("timeouts", "deadline"),
    [
        # The transaction's no-activity timeout, not the longer idle one.
        ({"inactivity_timeout": 30, "transaction_no_activity_timeout": 0.25}, 0.25),
        # An idle timeout shorter than the transaction's applies.
        ({"inactivity_timeout": 0.25, "transaction_no_activity_timeout": 30}, 0.25),
        # 0 turns the transaction's off: the idle one applies, as between requests.
        ({"inactivity_timeout": 0.5, "transaction_no_activity_timeout": 0}, 0.5),
    ],
    ids=["transaction", "shorter-idle", "transaction-off"],
)
def test_a_stalled_request_is_closed_after_the_no_activity_timeout(
    start_net: Callable[..., Any],  # noqa: F811
    fake_clock: FakeClock,
    timeouts: dict[str, float],
    deadline: float,
) -> None:
    _, port = serve(start_net, fake_clock, **timeouts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        send_and_settle(s, b"GET / HTTP/1.1\r\nHo", fake_clock)
        fake_clock.tick(deadline, COP)
        assert not closed_by_server(s), "closed before its deadline"
        fake_clock.tick(COP, COP)  # the cop's first run past it
        assert closed_by_server(s, wait=True)


def test_a_trickling_request_is_closed_after_the_transaction_active_timeout(
    start_net: Callable[..., Any],  # noqa: F811
    fake_clock: FakeClock,
) -> None:
    # A byte every cop period: never inactive, but the request never ends.
    _, port = serve(start_net, fake_clock, transaction_active_timeout=0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        start = fake_clock.now
        send_and_settle(s, b"GET / HTTP/1.1\r\n", fake_clock)
        while fake_clock.now - start < 0.5:
            send_and_settle(s, b"X", fake_clock)
            fake_clock.tick(COP, COP)
            assert not closed_by_server(s), f"closed at {fake_clock.now - start} s"
        fake_clock.tick(COP, COP)  # the cop's first run past the deadline
        assert closed_by_server(s, wait=True)


def test_between_requests_only_the_idle_timeout_applies(
    start_net: Callable[..., Any],  # noqa: F811
    fake_clock: FakeClock,
) -> None:
    # A request in two pieces runs under the short transaction timeouts; once answered, the
    # connection may stay idle for longer than they are, and serves the next request.
    service, port = serve(
        start_net,
        fake_clock,
        inactivity_timeout=10,
        transaction_no_activity_timeout=0.25,
        transaction_active_timeout=0.375,
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        send_and_settle(s, GET[:10], fake_clock)
        fake_clock.tick(2 * COP, COP)
        s.sendall(GET[10:])
        assert _read_response(s)[1] == HELLO
        fake_clock.tick(0.75, COP)  # twice the transaction timeouts, the cop every COP
        s.sendall(GET)
        assert _read_response(s)[1] == HELLO
    assert service.stats.get("proxy.process.http.incoming_requests") == 2
