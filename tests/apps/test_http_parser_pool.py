"""HTTP sessions hold a parser only while they parse (apps/http_parser.py): idle between
requests they hold none, the thread's pool hands the same parser to the next request of any
connection, and a parser that saw a close or an error is never pooled. Sessions driven by
hand on the test's thread (``_FakeVC``), whose pool is the one they use."""

from __future__ import annotations

from typing import Any

import pytest

from ats_cffi.apps import http as app
from ats_cffi.apps.http_parser import parser_pool, pooled_parsers
from ats_cffi.eventsystem import EventCode

from .test_http import HELLO, _FakeVC

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
CLOSE = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


@pytest.fixture(autouse=True)
def empty_pool() -> None:
    """Each test starts with this thread's pool empty, whatever tests before it left there
    (a session idle at the end of a test has given its parser back)."""
    parser_pool().clear()


def session() -> tuple[Any, _FakeVC]:
    vc = _FakeVC()
    return app.HttpSession(app.HttpService(), vc), vc  # type: ignore[arg-type]


def feed(s: Any, vc: _FakeVC, data: bytes) -> bytes:
    """``data`` arrives; returns what the session answered (all of it, written)."""
    s.rbuf.write(data)
    s.handle_event(EventCode.VC_EVENT_READ_READY, vc.rvio)
    out = vc.send(vc.wvio.ntodo()) if vc.wvio.ntodo() > 0 else b""
    if out and not s.closed:
        s.handle_event(EventCode.VC_EVENT_WRITE_COMPLETE, vc.wvio)
    return out


def test_an_idle_keep_alive_session_holds_no_parser_and_the_next_request_reuses_it() -> None:
    a, avc = session()
    before = pooled_parsers()
    assert a.link is None  # a new connection holds none
    assert feed(a, avc, GET).endswith(HELLO)
    assert a.link is None and pooled_parsers() == before + 1
    b, bvc = session()
    b.rbuf.write(GET[:10])  # a request in two reads: the parser is held in between
    b.handle_event(EventCode.VC_EVENT_READ_READY, bvc.rvio)
    link = b.link
    assert link is not None and link.session is b and pooled_parsers() == before
    assert feed(b, bvc, GET[10:]).endswith(HELLO)
    assert b.link is None and pooled_parsers() == before + 1
    assert feed(a, avc, GET).endswith(HELLO)  # a's next request: the parser b gave back
    assert a.link is None and pooled_parsers() == before + 1


def test_interleaved_requests_of_two_sessions_are_each_answered_whole() -> None:
    a, avc = session()
    b, bvc = session()
    before = pooled_parsers()
    a.rbuf.write(b"GET /nope HTTP/1.1\r\n")
    a.handle_event(EventCode.VC_EVENT_READ_READY, avc.rvio)
    assert feed(b, bvc, GET).endswith(HELLO)
    out = feed(a, avc, b"Host: a\r\n\r\n" + GET)  # a's request ends, a second follows
    assert out.startswith(b"HTTP/1.1 404 ") and out.endswith(HELLO)
    assert out.count(b"HTTP/1.1 ") == 2
    # Both parsers back: the pool's, or a new one where the pool had none left.
    assert a.link is None and b.link is None and pooled_parsers() == max(before, 2)


def test_a_parser_that_saw_a_close_or_an_error_is_not_pooled() -> None:
    for request, status in ((CLOSE, b"HTTP/1.1 200 "), (b"NOT HTTP\r\n\r\n", b"HTTP/1.1 400 ")):
        s, vc = session()
        before = pooled_parsers()
        s.rbuf.write(request)
        s.handle_event(EventCode.VC_EVENT_READ_READY, vc.rvio)
        link = s.link
        taken = max(before - 1, 0)  # the session took one (from the pool if it had one)
        assert link is not None and pooled_parsers() == taken  # kept, not given back
        assert vc.send(vc.wvio.ntodo()).startswith(status)
        s.handle_event(EventCode.VC_EVENT_WRITE_COMPLETE, vc.wvio)
        if not s.closed:  # (a 400 lingers)
            s.close()
        assert s.link is None and link.session is None  # dropped with the session
        assert pooled_parsers() == taken
