"""The http service's timeouts on real connections: a request that stalls, or trickles in,
is closed after the transaction timeouts; between requests only the idle one applies.

In-process (``net_processor`` with one net thread and a 50 ms InactivityCop), so that the
timeouts can be a fraction of a second."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from ats_cffi.apps.http import HttpService
from ats_cffi.apps.service import ListenSpec
from tests.net.conftest import start_net  # noqa: F401  (a fixture)

from .test_http import HELLO, _read_response

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def serve(start_net: Callable[..., Any], **timeouts: float) -> tuple[HttpService, int]:  # noqa: F811
    start_net(1)
    service = HttpService(**timeouts)
    return service, service.listen(ListenSpec("127.0.0.1", 0, 0, 0))


def closed_after(s: socket.socket, limit: float) -> float:
    """Seconds until the server closed ``s`` (EOF or reset), reading at most ``limit`` s."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


@pytest.mark.parametrize(
    ("timeouts", "low", "high"),
    [
        # The transaction's no-activity timeout, not the longer idle one.
        ({"inactivity_timeout": 30, "transaction_no_activity_timeout": 0.3}, 0.25, 2.0),
        # An idle timeout shorter than the transaction's applies.
        ({"inactivity_timeout": 0.3, "transaction_no_activity_timeout": 30}, 0.25, 2.0),
        # 0 turns the transaction's off: the idle one applies, as between requests.
        ({"inactivity_timeout": 0.6, "transaction_no_activity_timeout": 0}, 0.5, 2.5),
    ],
    ids=["transaction", "shorter-idle", "transaction-off"],
)
def test_a_stalled_request_is_closed_after_the_no_activity_timeout(
    start_net: Callable[..., Any],  # noqa: F811
    timeouts: dict[str, float],
    low: float,
    high: float,
) -> None:
    _, port = serve(start_net, **timeouts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHo")
        assert low < closed_after(s, 5) < high


def test_a_trickling_request_is_closed_after_the_transaction_active_timeout(
    start_net: Callable[..., Any],  # noqa: F811
) -> None:
    # A byte every 50 ms: never inactive, but the request never ends.
    _, port = serve(start_net, transaction_active_timeout=0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\n")
        closed = False
        for _ in range(100):  # at most 5 s
            try:
                s.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
            s.settimeout(0)
            try:
                if s.recv(65536) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed = True
                break
        assert closed and 0.4 < time.monotonic() - t0 < 3.0


def test_between_requests_only_the_idle_timeout_applies(
    start_net: Callable[..., Any],  # noqa: F811
) -> None:
    # A request in two pieces runs under the short transaction timeouts; once answered, the
    # connection may stay idle for longer than they are, and serves the next request.
    service, port = serve(
        start_net,
        inactivity_timeout=10,
        transaction_no_activity_timeout=0.3,
        transaction_active_timeout=0.4,
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(GET[:10])
        time.sleep(0.1)
        s.sendall(GET[10:])
        assert _read_response(s)[1] == HELLO
        time.sleep(0.8)  # twice the transaction timeouts, with the cop every 50 ms
        s.sendall(GET)
        assert _read_response(s)[1] == HELLO
    assert service.stats.get("proxy.process.http.incoming_requests") == 2
