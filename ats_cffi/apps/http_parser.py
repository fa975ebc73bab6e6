"""The httptools request parsers of a thread's HTTP sessions, pooled.

A parser (with the callbacks it binds when made) costs about 800 bytes; a session holds one
only while it has request bytes to parse, and gives it back to its thread's pool when it is
idle between requests (every request answered, no byte unread, the connection kept). An
idle keep-alive connection then holds no parser, and the next request of any connection of
the thread takes one from the pool. A parser is given back only at a message boundary of a
request that kept the connection, the one state in which the next bytes may come from any
client; one that failed, or saw a close or an upgrade, is dropped with its session.

A thread's pool is a free list through the idle links (``ParserLink.next``): a take and a
give are a few field stores. A list that a lone connection's requests empty and refill each
time reallocates its item array twice per request (CPython frees it when it empties).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httptools

from ats_cffi.apps.http_limits import head_complete, note_header
from ats_cffi.eventsystem.threadcache import ThreadCache

if TYPE_CHECKING:
    from ats_cffi.apps.http import HttpSession

__all__ = [
    "POOL_MAX",
    "ParserLink",
    "ParserPool",
    "give_parser",
    "parser_pool",
    "pooled_parsers",
    "take_parser",
]

#: Most idle parsers a thread keeps (more are freed).
POOL_MAX: Final = 256


class ParserLink:
    """A parser and the session it parses for now: it is the parser's protocol object and
    hands each callback to that session (the head's to http_limits.py, which keeps what it
    needs of them in the session)."""

    __slots__ = ("parser", "session", "next")

    def __init__(self) -> None:
        self.session: HttpSession | None = None
        #: The next idle link of its thread's pool while it is pooled (``ParserPool``).
        self.next: ParserLink | None = None
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.session.on_message_begin()  # type: ignore[union-attr]

    def on_url(self, url: bytes) -> None:
        self.session.on_url(url)  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        note_header(self.session, name, value)  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        head_complete(self.session)  # type: ignore[arg-type]

    def on_body(self, body: bytes) -> None:
        self.session.on_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.session.on_message_complete()  # type: ignore[union-attr]


class ParserPool:
    """A thread's idle parsers: the links of a free list (``head`` the last given back)."""

    __slots__ = ("head", "count")

    def __init__(self) -> None:
        self.head: ParserLink | None = None
        self.count = 0

    def clear(self) -> None:
        """Drop every idle parser (freed with their links)."""
        link = self.head
        self.head = None
        self.count = 0
        while link is not None:
            following = link.next
            link.next = None
            link = following


_pools: Final = ThreadCache(ParserPool)


def parser_pool() -> ParserPool:
    """The calling thread's pool of idle parsers (a session keeps it: it runs on one
    thread)."""
    pool: ParserPool = _pools.get()
    return pool


def take_parser(session: HttpSession, pool: ParserPool) -> ParserLink:
    """A parser for ``session``: from ``pool`` (its thread's), else a new one."""
    link = pool.head
    if link is not None:
        pool.head = link.next
        pool.count -= 1
        link.next = None
    else:
        link = ParserLink()
    link.session = session
    return link


def give_parser(link: ParserLink, pool: ParserPool) -> None:
    """``link``'s session is idle between requests (the module doc): its parser goes back to
    ``pool`` (its thread's), or is freed when the pool is full."""
    link.session = None
    if pool.count < POOL_MAX:
        link.next = pool.head
        pool.head = link
        pool.count += 1


def pooled_parsers() -> int:
    """How many idle parsers the calling thread's pool holds."""
    return parser_pool().count
