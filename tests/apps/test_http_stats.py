"""``ats-cffi http``'s counters add up: every request answered is counted once, in
``incoming_requests`` and in its status class."""

from __future__ import annotations

from .conftest import connect, get_json
from .test_http import _read_response

CLASSES = [f"proxy.process.http.{c}xx_responses" for c in (2, 3, 4, 5)]


def _answer(port: int, request: bytes) -> bytes:
    """The status line of the answer to ``request``, sent on a connection of its own."""
    with connect(port) as s:
        s.sendall(request)
        head, _ = _read_response(s)
    return head.split(b"\r\n", 1)[0]


def test_every_request_answered_is_counted_once_and_in_one_status_class(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    n_garbage, m_good = 3, 4
    for _ in range(n_garbage):  # each on its own connection: a 400 closes
        assert _answer(srv.port, b"GARBAGE\r\n\r\n") == b"HTTP/1.1 400 Bad Request"
    with connect(srv.port) as s:
        for _ in range(m_good):
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert _read_response(s)[0].startswith(b"HTTP/1.1 200 OK")
    g = get_json(srv.port)["global"]  # (this request is counted with its answer: after)
    assert g["proxy.process.http.incoming_requests"] == n_garbage + m_good
    assert sum(g[c] for c in CLASSES) == n_garbage + m_good
    assert g["proxy.process.http.400_responses"] == n_garbage
    assert g["proxy.process.http.4xx_responses"] == n_garbage


def test_refusals_of_every_kind_add_up_too(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    refusals = [
        (b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999\r\n\r\n", b"413"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n\r\n", b"417"),
        (b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n", b"404"),
        (b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n", b"405"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 140_000 + b"\r\n\r\n", b"431"),
        (b"GET /_stats HTTP/1.1\r\nHost: a\r\n\r\n", b"200"),
    ]
    for request, status in refusals:
        assert _answer(srv.port, request).split(b" ")[1] == status
    g = get_json(srv.port)["global"]
    assert g["proxy.process.http.incoming_requests"] == len(refusals)
    assert g["proxy.process.http.4xx_responses"] == len(refusals) - 1
    assert sum(g[c] for c in CLASSES) == len(refusals)
