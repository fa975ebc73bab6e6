"""gethostbyname against real test name servers on 127.0.0.1: A and AAAA, CNAME, NXDOMAIN,
NODATA, the hosts file, the cache, collapsing, literals."""

from __future__ import annotations

import socket
import threading

import pytest

from ats_cffi.dns import DNS_EVENT_LOOKUP, DNSError, HostEnt, dns_processor, dns_stats
from ats_cffi.eventsystem import Continuation
from ats_cffi.net import net_processor

from .conftest import Recorder, settle_net

RECORDS = {
    "www.test": {"A": ["10.1.2.3", "10.1.2.4"], "AAAA": ["2001:db8::1"]},
    "v6only.test": {"AAAA": ["2001:db8::66"]},
    "alias.test": {"CNAME": "www.test"},
}
WWW_A = ["10.1.2.3", "10.1.2.4"]


def stat(name: str) -> int:
    return dns_stats.get(f"proxy.process.dns.{name}")


def lookup(name: str, family: int = socket.AF_INET) -> HostEnt:
    rec = Recorder()
    dns_processor.gethostbyname(rec, name, family)
    ent = rec.result()
    assert rec.events[0][0] == DNS_EVENT_LOOKUP
    return ent


def test_a_lookup_is_answered_on_a_net_thread_with_the_servers_addresses(
    dns_server, start_dns
) -> None:
    server = dns_server(RECORDS)
    start_dns(server, n_threads=2)
    rec = Recorder()
    dns_processor.gethostbyname(rec, "www.test", socket.AF_INET)
    ent = rec.result()
    assert rec.events[0][0] == DNS_EVENT_LOOKUP
    assert ent.good and ent.error is None
    assert sorted(ent.addrs) == WWW_A  # the server shuffles them, as servers may
    assert ent.family == socket.AF_INET and ent.source == "dns" and ent.ttl == 300
    assert rec.threads[0] in net_processor.netthreads
    assert server.queries == [("www.test", "A", "udp")]
    assert stat("total_dns_lookups") == 1 and stat("lookup_successes") == 1
    assert stat("in_flight") == 0


def test_aaaa_lookup_returns_the_ipv6_addresses(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server)
    ent = lookup("www.test", socket.AF_INET6)
    assert ent.good and ent.family == socket.AF_INET6 and ent.addrs == ("2001:db8::1",)
    assert server.queries == [("www.test", "AAAA", "udp")]


def test_a_lookup_made_on_a_net_thread_is_answered_on_that_thread(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server, n_threads=2)
    rec = Recorder()
    asked_on = []
    for t in net_processor.netthreads:

        def ask(event: int, e: object, t=t) -> None:
            asked_on.append(t)
            dns_processor.gethostbyname(rec, "www.test")

        t.schedule_imm_signal(Continuation(rec.mutex, ask))
    rec.wait(2)
    assert sorted(map(id, rec.threads)) == sorted(map(id, asked_on))


def test_unspec_lookup_falls_back_to_aaaa_when_the_name_has_no_a_record(
    dns_server, start_dns
) -> None:
    server = dns_server(RECORDS)
    start_dns(server)
    ent = lookup("v6only.test", socket.AF_UNSPEC)
    assert ent.good and ent.family == socket.AF_INET6 and ent.addrs == ("2001:db8::66",)
    assert [q[1] for q in server.queries] == ["A", "AAAA"]
    ent = lookup("www.test", socket.AF_UNSPEC)
    assert ent.family == socket.AF_INET and ent.addrs[0] in WWW_A


def test_nxdomain_is_reported_as_a_name_error_and_not_retried(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server, retries=3)
    ent = lookup("nope.test")
    assert not ent.good and ent.error is DNSError.NXDOMAIN and ent.is_name_error()
    assert ent.addrs == ()
    assert server.total_queries == 1
    assert stat("lookup_failures") == 1 and stat("retries") == 0


def test_a_name_without_addresses_of_the_family_fails_with_nodata(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server)
    ent = lookup("v6only.test", socket.AF_INET)
    assert ent.error is DNSError.NODATA and not ent.is_name_error()


def test_a_cname_chain_is_followed_to_the_addresses(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server)
    ent = lookup("Alias.Test.")
    assert ent.good and ent.name == "alias.test"
    assert sorted(ent.addrs) == WWW_A  # the server shuffles them, as servers may
    assert ent.aliases == ("www.test",)


def test_hosts_file_entries_win_over_dns(dns_server, start_dns, hosts_file) -> None:
    hosts_file.write_text(
        "# test hosts\n10.9.9.9   www.test  pinned   # comment\n::9  www.test\n10.9.9.10 www.test\n"
    )
    server = dns_server(RECORDS)
    start_dns(server)
    ent = lookup("WWW.test")
    assert ent.good and ent.source == "hosts" and ent.addrs == ("10.9.9.9", "10.9.9.10")
    ent = lookup("www.test", socket.AF_INET6)
    assert ent.source == "hosts" and ent.addrs == ("::9",)
    assert lookup("pinned").addrs == ("10.9.9.9",)
    assert server.total_queries == 0
    assert stat("hosts_file_hits") == 3 and stat("total_dns_lookups") == 0
    # A name the hosts file does not list still goes to DNS.
    assert lookup("alias.test").source == "dns"
    assert server.total_queries == 1


def test_cache_hits_send_no_packets(dns_server, start_dns) -> None:
    server = dns_server(RECORDS, ttl=120)
    start_dns(server, n_threads=2)
    first = lookup("www.test")
    assert first.source == "dns" and server.total_queries == 1
    for _ in range(4):  # whichever thread's handler answers, the cache is shared
        ent = lookup("www.test")
        assert ent.source == "cache" and ent.addrs == first.addrs and 0 < ent.ttl <= 120
    assert server.total_queries == 1
    assert stat("cache_hits") == 4
    # Another family is another question.
    assert lookup("www.test", socket.AF_INET6).source == "dns"
    assert server.total_queries == 2


def test_the_cache_expires_on_the_net_threads_clock(dns_server, start_dns, fake_clock) -> None:
    server = dns_server(RECORDS, ttl=2)
    start_dns(server, clock=fake_clock)
    assert lookup("www.test").source == "dns"
    fake_clock.advance(1.5)
    ent = lookup("www.test")
    assert ent.source == "cache" and ent.ttl == 1  # half a second left, rounded up
    assert server.total_queries == 1
    fake_clock.advance(0.5)  # its TTL is over
    assert lookup("www.test").source == "dns"
    assert server.total_queries == 2


def test_answers_with_ttl_zero_or_a_zero_cache_are_not_cached(dns_server, start_dns) -> None:
    server = dns_server(RECORDS, ttl=0)
    start_dns(server)
    lookup("www.test")
    lookup("www.test")
    assert server.total_queries == 2


def test_negative_answers_without_an_soa_are_not_cached(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server)
    assert lookup("nope.test").error is DNSError.NXDOMAIN
    assert lookup("nope.test").error is DNSError.NXDOMAIN
    assert server.total_queries == 2


def test_negative_answers_are_cached_for_the_soa_negative_ttl(dns_server, start_dns) -> None:
    # RFC 2308: min(the SOA's TTL, its minimum): here 30 s, under the SOA's own 300 s.
    server = dns_server(RECORDS, soa=(300, 30))
    start_dns(server, n_threads=2)
    first = lookup("nope.test")
    assert first.error is DNSError.NXDOMAIN and first.source == "dns" and first.ttl == 30
    nodata = lookup("v6only.test")  # a name without A records
    assert nodata.error is DNSError.NODATA and nodata.source == "dns" and nodata.ttl == 30
    assert server.total_queries == 2
    for _ in range(3):  # whichever thread's handler answers, the cache is shared
        ent = lookup("nope.test")
        assert ent.error is DNSError.NXDOMAIN and ent.source == "cache" and 0 < ent.ttl <= 30
        assert ent.is_name_error()
        ent = lookup("v6only.test")
        assert ent.error is DNSError.NODATA and ent.source == "cache"
    assert server.total_queries == 2
    assert stat("cache_hits") == 6
    # The name's other family is another question, and a good answer.
    assert lookup("v6only.test", socket.AF_INET6).addrs == ("2001:db8::66",)
    assert server.total_queries == 3


def test_negative_ttl_is_capped_and_an_soa_ttl_of_zero_is_not_cached(dns_server, start_dns) -> None:
    clock = [1000.0]
    server = dns_server({"zero.test": {"A": ["10.0.0.1"]}}, soa=(300, 300))
    start_dns(server, cache_ttl_max=60.0)
    dns_processor.cache.clock = lambda: clock[0]
    assert lookup("nope.test").ttl == 300  # as the server said
    assert lookup("nope.test").source == "cache"
    clock[0] += 61  # past cache_ttl_max
    assert lookup("nope.test").source == "dns"
    assert server.total_queries == 2
    server.soa = (0, 300)  # min(0, 300): not to be cached
    clock[0] += 61
    assert lookup("nope.test").ttl == 0
    assert lookup("nope.test").source == "dns"
    assert server.total_queries == 4


def test_server_failures_are_not_cached(dns_server, start_dns) -> None:
    server = dns_server(RECORDS, mode="servfail", soa=(300, 300))
    start_dns(server, retries=0)
    assert lookup("www.test").error is DNSError.SERVFAIL
    assert lookup("www.test").error is DNSError.SERVFAIL
    assert server.total_queries == 2


def test_concurrent_lookups_of_one_name_share_one_question(dns_server, start_dns) -> None:
    server = dns_server(RECORDS, mode="hold")
    start_dns(server)
    recs = [Recorder() for _ in range(5)]
    for rec in recs:
        dns_processor.gethostbyname(rec, "www.test")
    assert server.wait_queries(1)
    assert server.release() == 1
    for rec in recs:
        assert sorted(rec.result().addrs) == WWW_A
    assert server.total_queries == 1
    assert stat("total_dns_lookups") == 1 and stat("lookup_successes") == 1


def test_questions_beyond_max_dns_in_flight_wait_for_a_free_slot(dns_server, start_dns) -> None:
    server = dns_server({"a.test": {"A": ["10.0.0.1"]}, "b.test": {"A": ["10.0.0.2"]}},
                        mode="hold")  # fmt: skip
    start_dns(server, max_dns_in_flight=1)
    ra, rb = Recorder(), Recorder()
    dns_processor.gethostbyname(ra, "a.test")
    dns_processor.gethostbyname(rb, "b.test")
    assert server.wait_queries(1)
    settle_net()  # both lookups reached the handler: a is on the wire, b waits for its slot
    (h,) = dns_processor.handlers.values()
    assert stat("in_flight") == 1 and [e.name for e in h.waiting] == ["b.test"]
    server.release()
    assert ra.result().addrs == ("10.0.0.1",)
    assert server.wait_queries(2)
    server.release()
    assert rb.result().addrs == ("10.0.0.2",)


def test_an_ip_literal_is_answered_as_itself_without_dns(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server)
    ent = lookup("127.0.0.1")
    assert ent.good and ent.addrs == ("127.0.0.1",) and ent.source == "literal"
    ent = lookup("::1", socket.AF_UNSPEC)
    assert ent.family == socket.AF_INET6 and ent.addrs == ("::1",)
    assert lookup("::1", socket.AF_INET).error is DNSError.NODATA
    assert server.total_queries == 0


def test_a_lookup_without_name_servers_fails_at_once(start_dns) -> None:
    start_dns()  # no servers, and the configured resolv.conf does not exist
    assert dns_processor.servers == ()
    ent = lookup("www.test")
    assert ent.error is DNSError.NO_NAMESERVERS


def test_lookups_from_many_threads_all_get_their_answer(dns_server, start_dns) -> None:
    names = {f"h{i}.test": {"A": [f"10.0.1.{i}"]} for i in range(20)}
    server = dns_server(names)
    start_dns(server, n_threads=2)
    results: dict[str, object] = {}
    lock = threading.Lock()

    def worker(names_part: list[str]) -> None:
        for n in names_part:
            ent = lookup(n)
            with lock:
                results[n] = ent

    keys = sorted(names)
    threads = [threading.Thread(target=worker, args=(keys[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert {n: e.addrs for n, e in results.items()} == {n: tuple(r["A"]) for n, r in names.items()}


@pytest.mark.parametrize(
    ("name", "family", "exc"),
    [
        (b"www.test", socket.AF_INET, TypeError),
        ("", socket.AF_INET, ValueError),
        ("a..b", socket.AF_INET, ValueError),
        ("x" * 64 + ".test", socket.AF_INET, ValueError),
        ("www.test", socket.AF_UNIX, ValueError),
        ("www.test", "inet", ValueError),
    ],
)
def test_gethostbyname_rejects_bad_arguments(dns_server, start_dns, name, family, exc) -> None:
    start_dns(dns_server(RECORDS))
    with pytest.raises(exc, match="gethostbyname"):
        dns_processor.gethostbyname(Recorder(), name, family)


def test_gethostbyname_before_start_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        dns_processor.gethostbyname(Recorder(), "www.test")
