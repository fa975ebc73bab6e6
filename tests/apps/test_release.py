"""A closed session is freed at once by reference counting, with its buffers, its VCs
(accepted and connected) and a splice's native pipes: nothing of it waits for the cyclic
garbage collector.

The collector is disabled while each test runs: a session caught in a reference cycle would
then never be freed, and its weak reference never die."""

from __future__ import annotations

import gc
import socket
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ats_cffi.apps.echo import EchoService
from ats_cffi.apps.http import HttpService
from ats_cffi.apps.service import ListenSpec, Service
from ats_cffi.apps.tunnel import TunnelService
from ats_cffi.net import UnixNetVConnection
from tests.conftest import interpreted_only
from tests.net.conftest import start_net, wait_until  # noqa: F401  (start_net: a fixture)

from .conftest import recv_exactly

# Every test records the VCs and sessions made by patching their classes.
pytestmark = interpreted_only


@pytest.fixture
def no_gc(
    start_net: Callable[..., Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[list[weakref.ref]]:
    """Runs the test without the collector; yields weak references to every VC made."""
    start_net(1)
    vcs: list[weakref.ref] = []
    init = UnixNetVConnection.__init__

    def recording_init(self: UnixNetVConnection, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        vcs.append(weakref.ref(self))

    monkeypatch.setattr(UnixNetVConnection, "__init__", recording_init)
    gc.collect()
    gc.disable()
    try:
        yield vcs
    finally:
        gc.enable()


def serve(service: Service) -> tuple[int, list[weakref.ref]]:
    """Listen on 127.0.0.1 and record a weak reference to each session (and its splice)."""
    refs: list[weakref.ref] = []
    add = service.add_session

    def recording_add(session: Any) -> None:
        add(session)
        refs.append(weakref.ref(session))

    service.add_session = recording_add  # type: ignore[method-assign]
    return service.listen(ListenSpec("127.0.0.1", 0, 0, 0)), refs


def echo_round(
    port: int, payload: bytes, reset: bool = False, while_open: Callable[[], None] | None = None
) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload
        if while_open is not None:
            while_open()
        if reset:  # an abortive close: RST
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")


def all_freed(refs: list[weakref.ref]) -> bool:
    return all(r() is None for r in refs)


@pytest.mark.parametrize("native", [True, False], ids=["splice", "vio"])
def test_closed_echo_sessions_are_freed_at_once(no_gc, native: bool) -> None:
    service = EchoService(native=native)
    port, refs = serve(service)
    splices: list[weakref.ref] = []

    def note_splice() -> None:  # the newest session's splice, while it runs
        session = refs[-1]()
        if session is not None and session.splice is not None:
            splices.append(weakref.ref(session.splice))

    for i in range(20):
        echo_round(port, b"x" * 70_000, bool(i % 2), note_splice if native else None)
    assert len(splices) == (20 if native else 0)
    assert len(refs) == 20 and len(no_gc) == 20
    assert wait_until(lambda: all_freed(refs) and all_freed(splices) and all_freed(no_gc)), (
        f"{sum(r() is not None for r in refs)} sessions, "
        f"{sum(r() is not None for r in no_gc)} VCs still held"
    )
    service.stop_accepting()


def test_closed_http_sessions_are_freed_at_once(no_gc) -> None:
    service = HttpService()
    port, refs = serve(service)
    for i in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            close = b"Connection: close\r\n" if i % 2 else b""
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + close + b"\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
            if i % 3 == 0:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    assert len(refs) == 20 and len(no_gc) == 20
    assert wait_until(lambda: all_freed(refs) and all_freed(no_gc), 8), (
        f"{sum(r() is not None for r in refs)} sessions, "
        f"{sum(r() is not None for r in no_gc)} VCs still held"
    )
    service.stop_accepting()


@pytest.mark.parametrize("native", [True, False], ids=["splice", "vio"])
def test_closed_tunnel_sessions_are_freed_at_once(no_gc, native: bool) -> None:
    upstream = EchoService(native=native)
    up_port, up_refs = serve(upstream)
    service = TunnelService(("127.0.0.1", up_port), native=native)
    port, refs = serve(service)
    for i in range(10):
        echo_round(port, b"y" * 70_000, reset=bool(i % 2))
    assert len(refs) == 10 and len(no_gc) == 30  # accepted, connected, accepted upstream
    assert wait_until(lambda: all_freed(refs) and all_freed(up_refs) and all_freed(no_gc)), (
        f"{sum(r() is not None for r in refs)} tunnel sessions, "
        f"{sum(r() is not None for r in no_gc)} VCs still held"
    )
    service.stop_accepting()
    upstream.stop_accepting()
