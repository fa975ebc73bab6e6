"""Timeouts, retries, name server rotation and the TCP fallback for truncated answers.

Timeouts run on the fake clock: each test advances it to just before and just past the
lookup timeout, and asserts what was sent and answered, and at which reading."""

from __future__ import annotations

import socket

from ats_cffi.dns import DNSError, HostEnt, dns_processor, dns_stats
from tests.net.conftest import wait_until

from .conftest import Recorder
from .dnsserver import closed_udp_port

#: A lookup timeout, and a step of the clock well inside it.
TIMEOUT = 0.25
EPS = 1 / 64

RECORDS = {"www.test": {"A": ["10.1.2.3"]}}
BIG = {"big.test": {"A": [f"10.2.{i // 250}.{i % 250}" for i in range(60)]}}


def stat(name: str) -> int:
    return dns_stats.get(f"proxy.process.dns.{name}")


def lookup(name: str, family: int = socket.AF_INET, timeout: float = 5.0) -> HostEnt:
    rec = Recorder()
    dns_processor.gethostbyname(rec, name, family)
    return rec.result(timeout)


def test_a_silent_server_times_out_then_the_next_server_answers(
    dns_server, start_dns, fake_clock
) -> None:
    silent = dns_server(RECORDS, mode="silent")
    good = dns_server(RECORDS)
    start_dns(silent, good, lookup_timeout=TIMEOUT, retries=2, clock=fake_clock)
    start = fake_clock.now
    rec = Recorder()
    dns_processor.gethostbyname(rec, "www.test")
    assert silent.wait_queries(1)
    fake_clock.advance(TIMEOUT - EPS)
    assert stat("retries") == 0 and rec.events == [], "retried before the timeout"
    fake_clock.advance(EPS)
    ent = rec.result()  # the retry went to the next server, whose answer came back
    assert rec.times == [start + TIMEOUT]
    assert ent.good and ent.addrs == ("10.1.2.3",)
    assert silent.total_queries == 1 and good.total_queries == 1
    assert stat("retries") == 1 and stat("lookup_successes") == 1
    # The handler failed over: the next question goes to the answering server first.
    assert lookup("other.test").error is DNSError.NXDOMAIN
    assert silent.total_queries == 1 and good.total_queries == 2


def test_round_robin_sends_each_new_question_to_the_next_server(dns_server, start_dns) -> None:
    a = dns_server({f"n{i}.test": {"A": ["10.0.0.1"]} for i in range(4)})
    b = dns_server({f"n{i}.test": {"A": ["10.0.0.2"]} for i in range(4)})
    start_dns(a, b, round_robin_nameservers=1)
    answers = [lookup(f"n{i}.test").addrs[0] for i in range(4)]
    assert answers == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]
    assert a.total_queries == 2 and b.total_queries == 2


def test_a_lookup_no_server_answers_fails_with_timeout_after_every_retry(
    dns_server, start_dns, fake_clock
) -> None:
    s1 = dns_server(RECORDS, mode="silent")
    s2 = dns_server(RECORDS, mode="silent")
    start_dns(s1, s2, lookup_timeout=TIMEOUT, retries=2, clock=fake_clock)
    start = fake_clock.now
    rec = Recorder()
    dns_processor.gethostbyname(rec, "www.test")
    for tries in (1, 2, 3):  # each try times out in its turn
        wait_until(lambda t=tries: s1.total_queries + s2.total_queries == t, what="the try")
        fake_clock.advance(TIMEOUT - EPS)
        assert stat("retries") == tries - 1 and rec.events == []
        fake_clock.advance(EPS)
    ent = rec.result()
    assert rec.times == [start + 3 * TIMEOUT]
    assert not ent.good and ent.error is DNSError.TIMEOUT
    # 3 tries, rotating over the servers: s1, s2, s1.
    assert s1.total_queries == 2 and s2.total_queries == 1
    assert stat("retries") == 2 and stat("max_retries_exceeded") == 1
    assert stat("lookup_failures") == 1 and stat("in_flight") == 0


def test_servfail_is_retried_on_the_next_server(dns_server, start_dns) -> None:
    bad = dns_server(RECORDS, mode="servfail")
    good = dns_server(RECORDS)
    start_dns(bad, good, lookup_timeout=5.0)
    ent = lookup("www.test")
    assert ent.good and bad.total_queries == 1 and good.total_queries == 1


def test_servfail_from_every_server_is_reported_once_the_retries_run_out(
    dns_server, start_dns
) -> None:
    bad = dns_server(RECORDS, mode="servfail")
    start_dns(bad, retries=1)
    ent = lookup("www.test")
    assert ent.error is DNSError.SERVFAIL and bad.total_queries == 2


def test_a_refused_port_fails_over_without_waiting_for_the_timeout(
    dns_server, start_dns, fake_clock
) -> None:
    good = dns_server(RECORDS)
    # The clock never moves: only the ICMP port-unreachable (ECONNREFUSED) can move on.
    start_dns(
        ("127.0.0.1", closed_udp_port()), good, lookup_timeout=60.0, retries=1, clock=fake_clock
    )
    ent = lookup("www.test", timeout=10)
    assert ent.good and good.total_queries == 1


def test_a_truncated_udp_answer_is_asked_again_over_tcp(dns_server, start_dns) -> None:
    server = dns_server(BIG, mode="truncate")
    start_dns(server)
    ent = lookup("big.test")
    assert ent.good and sorted(ent.addrs) == sorted(BIG["big.test"]["A"])
    assert server.queries == [("big.test", "A", "udp"), ("big.test", "A", "tcp")]
    assert stat("tcp_retries") == 1 and stat("retries") == 0


def test_tcp_answers_keep_working_after_the_server_closes_each_connection(
    dns_server, start_dns
) -> None:
    server = dns_server(dict(BIG, **{"big2.test": BIG["big.test"]}), mode="truncate")
    start_dns(server)
    assert lookup("big.test").good
    assert lookup("big2.test").good
    assert server.tcp_queries == 2
    assert stat("tcp_reset") == 0  # the server closed idle connections, not pending ones


def test_a_refused_tcp_fallback_retries_and_then_fails_with_a_network_error(
    dns_server, start_dns
) -> None:
    server = dns_server(BIG, mode="truncate", tcp=False)
    start_dns(server, retries=1)
    ent = lookup("big.test")
    assert ent.error is DNSError.NETWORK
    assert server.udp_queries == 2  # each UDP try was truncated, each TCP try refused
    assert stat("tcp_retries") == 2 and stat("retries") == 1 and stat("in_flight") == 0


def test_tcp_only_mode_never_uses_udp(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server, connection_mode=2)
    assert lookup("www.test").addrs == ("10.1.2.3",)
    assert server.udp_queries == 0 and server.tcp_queries == 1


def test_udp_only_mode_takes_a_truncated_answer_as_it_is(dns_server, start_dns) -> None:
    server = dns_server(BIG, mode="truncate")
    start_dns(server, connection_mode=0)
    assert lookup("big.test").error is DNSError.NODATA
    assert server.tcp_queries == 0
