"""``ats-cffi http`` and a request's head before its body (apps/http_limits.py): ``Expect:
100-continue`` gets ``100 Continue`` before the client sends its body, and a request whose
answer its head already tells (a declared body over ``MAX_BODY``, an unknown expectation,
an error status of its method or target while the client waits) is answered at once, with a
close, before any byte of its body. Raw sockets for the exact bytes, curl for a real client
(which waits 1 s for a 100 that does not come)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import connect, recv_exactly
from .test_http import HELLO, _FakeVC, _read_response, _refused

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_BODY = 1 << 20  # ats_cffi.apps.http.MAX_BODY (checked below)

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def _head(method: bytes, length: int, *extra: bytes, target: bytes = b"/") -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: a", b"Content-Length: %d" % length]
    return b"\r\n".join([*lines, *extra, b"", b""])


def test_max_body_is_the_one_these_tests_use() -> None:
    from ats_cffi.apps.http import MAX_BODY as max_body

    assert max_body == MAX_BODY


def test_a_request_that_expects_100_gets_it_before_its_body_then_its_answer(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    with connect(srv.port) as s:
        s.sendall(_head(b"GET", 5, b"Expect: 100-continue"))
        # No byte of the body is sent before the 100 came, exactly it and nothing more.
        assert recv_exactly(s, len(CONTINUE)) == CONTINUE
        s.sendall(b"hello")
        head, body = _read_response(s)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == HELLO
        assert b"Connection: keep-alive" in head
        # The connection is kept: a chunked body that waits for its 100 too.
        s.sendall(
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        assert recv_exactly(s, len(CONTINUE)) == CONTINUE
        s.sendall(b"3\r\nabc\r\n0\r\n\r\n")
        assert _read_response(s)[1] == HELLO


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (_head(b"GET", 4 * MAX_BODY), b"413 Content Too Large"),
        (_head(b"GET", MAX_BODY + 1, b"Expect: 100-continue"), b"413 Content Too Large"),
        (_head(b"GET", 10, b"Expect: something-else"), b"417 Expectation Failed"),
        (_head(b"POST", 10, b"Expect: 100-continue"), b"405 Method Not Allowed"),
        (_head(b"GET", 10, b"Expect: 100-continue", target=b"/no"), b"404 Not Found"),
        (
            _head(b"GET", 10, b"Expect: 100-continue", target=b"/" + b"u" * 9000),
            b"414 URI Too Long",
        ),
    ],
    ids=["too-large", "too-large-expect", "unknown-expect", "post", "not-found", "uri"],
)
def test_a_request_refused_by_its_head_is_answered_before_its_body(
    cli, head: bytes, status: bytes
) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    with connect(srv.port) as s:
        s.sendall(head)  # and nothing more: the answer comes without the body
        s.settimeout(5.0)
        first = s.recv(len(b"HTTP/1.1 100"))
        assert first == b"HTTP/1.1 " + status[:3], first  # no 100 Continue before it
        rest = b""
        while chunk := s.recv(65536):  # then the close
            rest += chunk
    assert (first + rest).startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert b"\r\nConnection: close\r\n" in rest and rest.count(b"HTTP/1.1") == 0


def test_a_body_announced_too_large_and_sent_anyway_is_refused_and_discarded(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    with connect(srv.port) as s:
        s.sendall(_head(b"GET", 2 * MAX_BODY) + b"b" * 100_000)
        _refused(s, b"413 Content Too Large")


def _curl(url: str, *args: str) -> tuple[str, float, bytes]:
    """``curl`` with ``args``: (status, seconds it took, its verbose log)."""
    out = subprocess.run(
        ["curl", "-sS", "-v", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", *args, url],
        capture_output=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    code, seconds = out.stdout.decode().split()
    return code, float(seconds), out.stderr


@needs_curl
def test_curl_gets_413_for_a_2_mib_upload_without_waiting_for_a_100(cli, tmp_path: Path) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    big = tmp_path / "big"
    big.write_bytes(b"x" * (2 << 20))
    code, seconds, log = _curl(f"http://127.0.0.1:{srv.port}/", "--data-binary", f"@{big}")
    assert b"> Expect: 100-continue" in log  # curl asks for large bodies
    assert code == "413"
    assert seconds < 0.5  # curl waits 1 s for a 100 before it sends anyway


@needs_curl
@pytest.mark.parametrize(
    ("method", "code", "continued"), [("GET", "200", True), ("POST", "405", False)]
)
def test_curl_expecting_100_for_a_small_body_gets_its_answer_without_waiting(
    cli, tmp_path: Path, method: str, code: str, continued: bool
) -> None:
    # A body the route takes: 100, then the answer. POST, which every route refuses: the 405
    # at once, without the body.
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    small = tmp_path / "small"
    small.write_bytes(b"y" * 100)
    url = f"http://127.0.0.1:{srv.port}/"
    args = ["-X", method, "--data-binary", f"@{small}", "-H", "Expect: 100-continue"]
    got, seconds, log = _curl(url, *args)
    assert got == code
    assert (b"< HTTP/1.1 100 Continue" in log) is continued
    assert seconds < 0.5


# ---------------------------------------------------------------------- in process


def _session() -> tuple[Any, _FakeVC]:
    from ats_cffi.apps import http as app

    vc = _FakeVC()
    return app.HttpSession(app.HttpService(), vc), vc  # type: ignore[arg-type]


def _read(session: Any, vc: _FakeVC, data: bytes) -> bytes:
    """``data`` arrives; what the session wrote in answer."""
    from ats_cffi.eventsystem import EventCode

    session.rbuf.write(data)
    session.handle_event(EventCode.VC_EVENT_READ_READY, vc.rvio)
    return vc.send(vc.wvio.ntodo()) if vc.wvio.ntodo() > 0 else b""


def test_http10_ignores_expect_and_a_body_that_came_along_needs_no_100() -> None:
    s, vc = _session()
    # HTTP/1.0 has no 100 (RFC 9110 10.1.1): its expectation is ignored, its body read.
    head = b"GET / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    assert _read(s, vc, head) == b""
    assert _read(s, vc, b"abc").startswith(b"HTTP/1.1 200 OK\r\n")
    # HTTP/1.1 whose body came in the same read as its head: answered, no 100 before it.
    s, vc = _session()
    out = _read(s, vc, _head(b"GET", 3, b"Expect: 100-continue") + b"abc")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(HELLO)
    # A request without a body that expects 100 (RFC 9110 says a client must not) is
    # answered; pipelined after it, one whose head ends the read gets its 100.
    out = _read(
        s,
        vc,
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"
        + _head(b"GET", 2, b"expect: 100-continue"),
    )
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(HELLO + CONTINUE)
    assert _read(s, vc, b"ab").endswith(HELLO)
    assert not s.closing


def test_a_request_after_one_that_closed_is_neither_refused_nor_continued() -> None:
    s, vc = _session()
    out = _read(
        s,
        vc,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        + _head(b"GET", 2 * MAX_BODY, b"Expect: 100-continue"),
    )
    assert out.count(b"HTTP/1.1 ") == 1 and out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert s.closing


@pytest.mark.parametrize(
    ("length", "status"),
    [
        (b"1048576", b"200"),  # MAX_BODY itself is taken
        (b"1048577", b"413"),
        (b" 1048577 ", b"413"),
        (b"9" * 19, b"413"),  # (not converted: past 18 digits it is over MAX_BODY)
        (b"9" * 5000, b"400"),  # the parser refuses a length past 64 bits
        (b"12a", b"400"),
    ],
)
def test_the_declared_length_is_read_as_the_parser_reads_it(length: bytes, status: bytes) -> None:
    from ats_cffi.apps import http as app

    s, vc = _session()
    head = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n" % length
    out = _read(s, vc, head)
    if status == b"200":  # the body is awaited, then answered
        assert out == b"" and not s.closing
        out = _read(s, vc, b"x" * MAX_BODY)
    assert out.startswith(b"HTTP/1.1 " + status + b" "), out
    counts = s.service.stats
    assert counts.get(app.REQUESTS) == 1
    assert counts.get(app.R2XX if status == b"200" else app.R4XX) == 1
