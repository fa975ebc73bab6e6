"""connect_re and connect_s with a host name, resolved through dns_processor."""

from __future__ import annotations

import errno
import threading

import pytest

from ats_cffi.dns import dns_processor, dns_stats
from ats_cffi.net import net_processor, net_stats
from ats_cffi.net.codes import NET_EVENT_OPEN, NET_EVENT_OPEN_FAILED, net_strerror
from tests.net.conftest import wait_until

from .conftest import Recorder, settle_net

RECORDS = {"name.test": {"A": ["127.0.0.1"]}, "v6.test": {"AAAA": ["::1"]}}
OPEN = "proxy.process.net.connections_currently_open"
FAILURES = "proxy.process.tunnel.upstream_connect_failures"


def test_connect_re_connects_to_a_host_name_through_the_test_dns_server(
    dns_server, listen, start_dns
) -> None:
    server = dns_server(RECORDS)
    _, acceptor, port = listen()
    start_dns(server)
    rec = Recorder()
    net_processor.connect_re(rec, ("name.test", port))
    event, vc = rec.wait()[0]
    assert event == NET_EVENT_OPEN
    acceptor.wait()
    assert vc.get_remote_addr() == ("127.0.0.1", port)
    assert rec.threads[0] in net_processor.netthreads
    assert server.queries == [("name.test", "A", "udp")]
    vc.do_io_close()


def test_connect_s_accepts_a_host_name(dns_server, listen, start_dns) -> None:
    server = dns_server(RECORDS)
    _, acceptor, port = listen()
    start_dns(server)
    vc = net_processor.connect_s(("name.test", port), timeout=5)
    acceptor.wait()
    assert vc.get_remote_addr() == ("127.0.0.1", port)
    vc.do_io_close()
    # The second connect is answered from the cache.
    vc = net_processor.connect_s(("NAME.test", port), timeout=5)
    vc.do_io_close()
    assert server.total_queries == 1


def test_connect_re_to_a_hosts_file_name_needs_no_dns(
    dns_server, listen, start_dns, hosts_file
) -> None:
    hosts_file.write_text("127.0.0.1 local.test\n")
    server = dns_server(RECORDS)
    _, acceptor, port = listen()
    start_dns(server)
    vc = net_processor.connect_s(("local.test", port), timeout=5)
    vc.do_io_close()
    assert server.total_queries == 0


def test_connect_re_to_an_unknown_name_fails_with_ehostunreach(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server)
    rec = Recorder()
    net_processor.connect_re(rec, ("nope.test", 80))
    assert rec.wait() == [(NET_EVENT_OPEN_FAILED, -errno.EHOSTUNREACH)]
    # The errno says "unreachable"; the failure names the DNS result and the name.
    reason = "DNS lookup of 'nope.test' failed: no such name (NXDOMAIN)"
    assert net_strerror(rec.events[0][1]) == reason
    with pytest.raises(OSError) as info:
        net_processor.connect_s(("nope.test", 80), timeout=5)
    assert info.value.errno == errno.EHOSTUNREACH
    assert info.value.strerror == f"connect_s: {reason}"


def test_connect_re_fails_with_etimedout_when_no_name_server_answers(
    dns_server, start_dns, fake_clock
) -> None:
    silent = dns_server(RECORDS, mode="silent")
    start_dns(silent, lookup_timeout=0.25, retries=0, clock=fake_clock)
    rec = Recorder()
    net_processor.connect_re(rec, ("name.test", 80))
    assert silent.wait_queries(1)
    fake_clock.advance(0.25)
    assert rec.events == [(NET_EVENT_OPEN_FAILED, -errno.ETIMEDOUT)]
    assert net_strerror(rec.events[0][1]) == (
        "DNS lookup of 'name.test' failed: no name server answered (TIMEOUT)"
    )
    # connect_s blocks its thread: the clock is advanced from this one meanwhile.
    raised: list[BaseException] = []

    def connect_s() -> None:
        try:
            net_processor.connect_s(("name.test", 80), timeout=5)
        except BaseException as exc:
            raised.append(exc)

    t = threading.Thread(target=connect_s)
    t.start()
    assert silent.wait_queries(2)
    fake_clock.advance(0.25)
    t.join(5)
    assert len(raised) == 1 and isinstance(raised[0], TimeoutError), raised


def test_a_cancelled_connect_by_name_sends_no_event_and_opens_nothing(
    dns_server, listen, start_dns
) -> None:
    server = dns_server(RECORDS, mode="hold")
    _, acceptor, port = listen()
    start_dns(server)
    rec = Recorder()
    action = net_processor.connect_re(rec, ("name.test", port))
    assert server.wait_queries(1)
    action.cancel()
    server.release()
    assert wait_until(lambda: dns_stats.get("proxy.process.dns.cancelled_answers") == 1)
    settle_net()  # dropped there: an event, or a connect, would have come by now
    assert rec.events == [] and acceptor.vcs == []
    assert net_stats.get(OPEN) == 0


def test_connect_re_rejects_host_names_once_dns_processor_stops(dns_server, start_dns) -> None:
    start_dns(dns_server(RECORDS))
    assert net_processor.host_resolver is dns_processor
    dns_processor.stop()
    assert net_processor.host_resolver is None
    with pytest.raises(ValueError, match="host name"):
        net_processor.connect_re(Recorder(), ("name.test", 80))


def test_connect_re_checks_the_options_before_resolving(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server)
    with pytest.raises(TypeError, match="NetVCOptions"):
        net_processor.connect_re(Recorder(), ("name.test", 80), options=object())
    assert server.total_queries == 0


def test_the_tunnel_logs_an_upstream_lookup_failure_as_the_dns_result(
    dns_server, start_dns, caplog
) -> None:
    # Before: "connect to 'nope.test' failed: errno 113" (No route to host), a line each.
    import socket

    from ats_cffi.apps.service import ListenSpec
    from ats_cffi.apps.tunnel import TunnelService

    server = dns_server(RECORDS)
    start_dns(server)
    service = TunnelService(("nope.test", 80))
    port = service.listen(ListenSpec("127.0.0.1", 0, accept_threads=0, defer_accept=0))
    try:
        with caplog.at_level("INFO", logger="ats.apps.tunnel"):
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    assert c.recv(1) == b""  # closed: its upstream could not be reached
            assert wait_until(lambda: service.stats.snapshot()[FAILURES] == 3)
        lines = [r.getMessage() for r in caplog.records if r.name == "ats.apps.tunnel"]
        assert lines == [
            "tunnel: connect to nope.test:80 failed: "
            "DNS lookup of 'nope.test' failed: no such name (NXDOMAIN)"
        ]  # the next two within the minute: counted, not logged
    finally:
        service.stop_accepting()
        settle_net()
