"""What the http service learns from a request's head before its body, and the limits that
refuse a request.

Sizes: a request target over ``MAX_URL`` bytes gets 414, a head over ``MAX_HEAD`` bytes 431
(414 when the target alone is too long: ``refuse_head``), a body over ``MAX_BODY`` bytes
413, each with a close.

A request whose answer its head already tells is answered once its head is complete
(httptools' ``on_headers_complete``), with a close and before any byte of its body is read
(``check_head``):

- a target over ``MAX_URL``: 414;
- an ``Expect`` other than ``100-continue``: 417 (RFC 9110 10.1.1 allows it);
- a declared ``Content-Length`` over ``MAX_BODY``: 413, where it used to come after 1 MiB of
  body was read (a chunked body declares nothing: it is counted as it comes, ``on_body``);
- with ``Expect: 100-continue``, the error status of its method or target (404, 405): the
  client waits for a 100 and sends no body, so the answer need not wait for one.

Otherwise an HTTP/1.1 request with ``Expect: 100-continue`` gets ``100 Continue`` as soon as
the read where its head ended is parsed (``send_continue``), unless that read completed the
request: its body came along, and RFC 9110 lets the server leave the 100 out. Without it a
client waits (curl: 1 s) before it sends its body. An HTTP/1.0 request's ``Expect`` is
ignored (RFC 9110 10.1.1: HTTP/1.0 has no 100). Every answer counts in the stats; the 100,
not a final response, does not.

What a request pays for this: httptools tells a header's value only through ``on_header``
(no ``Content-Length`` or ``Expect`` after the head), which it then calls for each header of
every request, making the name's and the value's bytes for it; ``note_header`` drops the
header unless its name is one of the three it keeps (a length test first). About 85 ns per
header, compiled (``perf/bench_http.py``'s two-header ``GET /``: 1.40 -> 1.59 us). Then
``on_headers_complete`` once, which calls ``check_head`` only when a header (or the target)
asked for it, and the session resets the fields ``note_header`` sets at each request's
start. A binding of llhttp that reads the parser's ``content_length`` and flags after the
head would need none of the per-header calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httptools

from ats_cffi.apps.http_responses import ALLOW, find_route

if TYPE_CHECKING:
    from ats_cffi.apps.http import HttpSession

__all__ = [
    "CONTINUE",
    "HEAD_BEGUN",
    "HEAD_DONE",
    "MAX_BODY",
    "MAX_HEAD",
    "MAX_URL",
    "check_head",
    "head_complete",
    "note_header",
    "refuse_head",
    "request_spans_blocks",
]

_get_method: Final = httptools.HttpRequestParser.get_method
_get_http_version: Final = httptools.HttpRequestParser.get_http_version

#: Longest request target accepted (414 beyond).
MAX_URL: Final = 8192
#: Most bytes a request head may take: ATS's ``proxy.config.http.request_header_max_size``
#: default. Counted from the bytes parsed after the piece (at most one ``HTTP_BLOCK_SIZE`` block)
#: where the request began, since the parser does not say where in a piece that is: a head is
#: refused once more than ``MAX_HEAD`` bytes of it came after that piece, so never before it
#: exceeds ``MAX_HEAD``.
MAX_HEAD: Final = 131072
#: A session's ``head_bytes`` while it does not count them: the request began in the block
#: being parsed; its head is complete.
HEAD_BEGUN: Final = -2
HEAD_DONE: Final = -1
#: Most body bytes a request may carry (no route reads one): nginx's default
#: ``client_max_body_size``. A smaller body is read and discarded.
MAX_BODY: Final = 1 << 20
#: The interim response to ``Expect: 100-continue``.
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Digits of a ``Content-Length`` past which it is over ``MAX_BODY`` without converting it
#: (``int`` refuses strings of thousands of digits).
_LENGTH_DIGITS: Final = 18


def note_header(session: HttpSession, name: bytes, value: bytes) -> None:
    """httptools' ``on_header``: keep ``Content-Length``, ``Expect`` and ``Accept``; a
    length over ``MAX_BODY`` or an ``Expect`` asks for ``check_head``. The parser refuses a
    malformed or repeated ``Content-Length`` itself."""
    n = len(name)
    if n == 14:
        if name.lower() == b"content-length":
            digits = value.strip()
            if digits.isdigit():
                length = MAX_BODY + 1 if len(digits) > _LENGTH_DIGITS else int(digits)
                session.body_length = length
                if length > MAX_BODY:
                    session.head_check = True
    elif n == 6:
        lower = name.lower()
        if lower == b"expect":  # several: joined, then not 100-continue alone (417)
            session.expect = session.expect + b"," + value if session.expect else value
            session.head_check = True
        elif lower == b"accept":
            session.accept = value


def head_complete(session: HttpSession) -> None:
    """httptools' ``on_headers_complete``: the head's bytes are no longer counted; a head
    that asked for it (``head_check``) is seen now."""
    session.head_bytes = HEAD_DONE
    if session.head_check:
        check_head(session)


def check_head(session: HttpSession) -> None:
    """The head is complete and ``session.head_check`` set: answer with a close now if the
    head tells the answer, else arm the 100 for ``Expect: 100-continue`` (module doc)."""
    if session.closing:  # after a response that closed: not answered
        return
    link = session.link
    assert link is not None  # this is its parser's callback
    parser = link.parser
    expect = session.expect
    if expect and _get_http_version(parser) == "1.0":
        expect = b""  # HTTP/1.0 has no 100 (RFC 9110 10.1.1)
    if session.url_too_long:
        session.refuse(414)
    elif expect and expect.strip().lower() != b"100-continue":
        session.refuse(417)
    elif session.body_length > MAX_BODY:
        session.refuse(413)
    elif expect:
        method = _get_method(parser)
        if find_route(session.service.routes, session.url) is None:  # type: ignore[attr-defined]
            session.refuse(404)
        elif method != b"GET" and method != b"HEAD":
            session.refuse(405, ALLOW)
        else:
            session.continue_pending = True


def request_spans_blocks(session: HttpSession, n: int) -> None:
    """A request goes on past the block just parsed (``n`` bytes of it): its head, unless
    complete, counts them against ``MAX_HEAD``; a 100 due is sent."""
    if session.continue_pending:
        send_continue(session)
    if session.head_bytes >= 0:
        session.head_bytes += n
        if session.head_bytes > MAX_HEAD:
            refuse_head(session)
    elif session.head_bytes == HEAD_BEGUN:
        session.head_bytes = 0


def send_continue(session: HttpSession) -> None:
    """Queue ``100 Continue``: the request's head ended the read, its body has not come."""
    session.continue_pending = False
    wbuf = session.wbuf if session.wbuf is not None else session.open_write()
    session.queued += wbuf.write(CONTINUE, session.pool)


def refuse_head(session: HttpSession) -> None:
    """The request head outgrew ``MAX_HEAD``: answer with a close (module doc)."""
    session.refuse(414 if session.url_too_long else 431)
