"""Fixtures for the DNS layer: test name servers on 127.0.0.1 and a started dns_processor.

Every test configures its name servers explicitly and a hosts file of its own: nothing is
ever sent to an address other than 127.0.0.1, and /etc/hosts and /etc/resolv.conf are
never read by these tests. A test of timeouts and retries runs the net threads on the fake
clock (``start_dns(..., clock=fake_clock)``) and advances it past each lookup timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ats_cffi.dns import dns_config, dns_processor, dns_stats
from ats_cffi.eventsystem import Continuation, ProxyMutex, this_ethread
from ats_cffi.net import net_processor
from tests.conftest import settle
from tests.net.conftest import listen, net, start_net  # noqa: F401  (the net fixtures, shared)

from .dnsserver import FakeDNSServer


@pytest.fixture
def dns_server() -> Iterator[Callable[..., FakeDNSServer]]:
    """``dns_server(records, mode=..., ttl=..., inject=...)``: a FakeDNSServer, stopped
    after the test."""
    servers: list[FakeDNSServer] = []

    def make(records: dict[str, dict] | None = None, **kw: Any) -> FakeDNSServer:
        s = FakeDNSServer(records, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def hosts_file(tmp_path: Path) -> Path:
    """The test's hosts file (empty unless the test writes it before start_dns)."""
    p = tmp_path / "hosts"
    p.write_text("")
    return p


@pytest.fixture
def start_dns(
    start_net: Callable[..., Any],  # noqa: F811  (the fixture imported above)
    hosts_file: Path,
    tmp_path: Path,
) -> Iterator[Callable[..., Any]]:
    """``start_dns(*servers, n_threads=1, clock=None, **records)``: start the net processor
    (on ``clock``, if given) and ``dns_processor`` with ``servers`` as name servers, the
    test's hosts file, a 2 s lookup timeout and 1 retry unless ``records`` (attribute names
    of dns_config) say otherwise. Stopped (before the net processor) after the test."""
    started = []

    def start(
        *servers: FakeDNSServer | tuple[str, int],
        n_threads: int = 1,
        clock: Callable[[], float] | None = None,
        **records: Any,
    ):
        dns_config.reset()
        addrs = [s.addr if isinstance(s, FakeDNSServer) else s for s in servers]
        dns_config.set("nameservers", addrs)
        dns_config.set("host_file_path", str(hosts_file))
        dns_config.set("resolv_conf", str(tmp_path / "no-resolv.conf"))
        dns_config.set("lookup_timeout", 2.0)
        dns_config.set("retries", 1)
        dns_config.set("round_robin_nameservers", 0)
        for key, value in records.items():
            dns_config.set(key, value)
        dns_stats.reset()
        if not net_processor.started:
            start_net(n_threads, clock=clock)
        dns_processor.start()
        started.append(True)
        return dns_processor

    yield start
    if started:
        dns_processor.stop()
    dns_config.reset()


class Recorder(Continuation):
    """Collects ``(event, data)``, the EThread each event arrived on and the reading of its
    clock then (``times``)."""

    def __init__(self) -> None:
        super().__init__(ProxyMutex())
        self.events: list[tuple[int, Any]] = []
        self.threads: list[Any] = []
        self.times: list[float] = []
        self.sem = threading.Semaphore(0)
        self.set_handler(self.handle)

    def handle(self, event: int, data: Any) -> None:
        self.events.append((event, data))
        t = this_ethread()
        self.threads.append(t)
        self.times.append(t.clock() if t is not None else float("nan"))
        self.sem.release()

    def wait(self, n: int = 1, timeout: float = 5.0) -> list[tuple[int, Any]]:
        for _ in range(n):
            assert self.sem.acquire(timeout=timeout), f"no event within {timeout} s"
        return self.events

    def result(self, timeout: float = 5.0) -> Any:
        """The data of the one event expected."""
        self.wait(1, timeout)
        assert len(self.events) == 1, self.events
        return self.events[0][1]


def settle_net() -> None:
    """Every net thread has run what was due and queued onto it (``settle``)."""
    settle(net_processor.netthreads)
