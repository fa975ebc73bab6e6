"""Records, resolv.conf and hosts file parsing, the cache, stats, and processor life.
Nothing here sends a packet."""

from __future__ import annotations

import socket

import pytest

from ats_cffi.dns import (
    DNSConfig,
    HostCache,
    HostEnt,
    HostsFile,
    dns_config,
    dns_processor,
    dns_stats,
    parse_nameservers,
    parse_resolv_conf,
    read_resolv_conf,
)
from ats_cffi.dns.stats import STAT_NAMES
from ats_cffi.net import net_processor

RESOLV_CONF = """\
# generated
domain example.internal
search example.internal
nameserver 127.0.0.1   # first
nameserver ::1
nameserver fe80::1%eth0
nameserver not-an-ip
options timeout:2 attempts:3
nameserver 127.0.0.2
"""


def test_resolv_conf_nameserver_lines_are_read_in_order_on_port_53() -> None:
    assert parse_resolv_conf(RESOLV_CONF) == (("127.0.0.1", 53), ("::1", 53), ("127.0.0.2", 53))


def test_read_resolv_conf_of_a_temp_file_and_of_a_missing_one(tmp_path) -> None:
    p = tmp_path / "resolv.conf"
    p.write_text(RESOLV_CONF)
    assert read_resolv_conf(str(p))[0] == ("127.0.0.1", 53)
    assert read_resolv_conf(str(tmp_path / "missing")) == ()


def test_start_without_nameservers_takes_those_of_the_configured_resolv_conf(
    start_net, tmp_path
) -> None:
    # The servers are only recorded and connect()-ed (UDP: no packet); no lookup is made.
    p = tmp_path / "resolv.conf"
    p.write_text("nameserver 127.0.0.1\nnameserver 127.0.0.3\n")
    (tmp_path / "hosts").write_text("")
    start_net(1)
    dns_config.reset()
    dns_config.set("proxy.config.dns.resolv_conf", str(p))
    dns_config.set("proxy.config.hostdb.host_file.path", str(tmp_path / "hosts"))
    try:
        dns_processor.start()
        assert dns_processor.servers == (("127.0.0.1", 53), ("127.0.0.3", 53))
        (h,) = dns_processor.handlers.values()
        assert [c.ip for c in h.udpcon] == [("127.0.0.1", 53), ("127.0.0.3", 53)]
    finally:
        dns_processor.stop()
        dns_config.reset()


def test_nameservers_take_ats_text_or_ip_port_pairs() -> None:
    assert parse_nameservers("127.0.0.1:5353 [::1]:53, 127.0.0.2;::1\t127.0.0.3:1") == (
        ("127.0.0.1", 5353), ("::1", 53), ("127.0.0.2", 53), ("::1", 53), ("127.0.0.3", 1),
    )  # fmt: skip
    assert parse_nameservers([("127.0.0.1", 1053)]) == (("127.0.0.1", 1053),)
    assert parse_nameservers("") == ()


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        ("dns.example:53", ValueError),
        ("127.0.0.1:http", ValueError),
        ("[::1:53", ValueError),
        ([("127.0.0.1", 0)], ValueError),
        ([("127.0.0.1", "53")], ValueError),
        ([("127.0.0.1",)], TypeError),
        (53, TypeError),
    ],
)
def test_bad_nameservers_are_rejected_naming_the_record(value, exc) -> None:
    with pytest.raises(exc, match="proxy.config.dns.nameservers"):
        DNSConfig().set("proxy.config.dns.nameservers", value)


def test_records_have_ats_names_and_defaults_and_validate() -> None:
    c = DNSConfig()
    assert c.get("proxy.config.dns.lookup_timeout") == 20
    assert c.get("proxy.config.dns.retries") == 5
    assert c.get("proxy.config.dns.resolv_conf") == "/etc/resolv.conf"
    assert c.get("proxy.config.dns.round_robin_nameservers") == 1
    assert c.get("proxy.config.dns.max_dns_in_flight") == 2048
    assert c.get("proxy.config.hostdb.host_file.path") == "/etc/hosts"
    c.set("proxy.config.dns.lookup_timeout", 0.25)
    assert c.lookup_timeout == 0.25
    c.retries = 2
    assert c.get("proxy.config.dns.retries") == 2
    with pytest.raises(ValueError, match="proxy.config.dns.retries"):
        c.set("proxy.config.dns.retries", 10)
    with pytest.raises(ValueError, match="proxy.config.dns.retries"):
        c.set("proxy.config.dns.retries", 1.5)
    with pytest.raises(TypeError, match="proxy.config.dns.lookup_timeout"):
        c.set("proxy.config.dns.lookup_timeout", "1")
    with pytest.raises(ValueError, match="proxy.config.dns.lookup_timeout"):
        c.set("proxy.config.dns.lookup_timeout", 0)
    with pytest.raises(TypeError, match="resolv_conf"):
        c.set("proxy.config.dns.resolv_conf", None)
    with pytest.raises(KeyError):
        c.set("proxy.config.dns.nope", 1)
    with pytest.raises(KeyError):
        c.get("proxy.config.dns.nope")
    c.reset()
    assert c.retries == 5


def test_hosts_file_lists_every_address_of_a_name_per_family() -> None:
    hosts = HostsFile(
        [
            "127.0.0.1 localhost",
            "# 10.0.0.1 commented.test",
            "10.0.0.2 Web.Test web  # trailing",
            "10.0.0.3 web.test.",
            "2001:db8::2 web.test",
            "bogus line",
            "not-an-ip name.test",
        ]
    )
    assert hosts.lookup("web.test", socket.AF_INET) == ["10.0.0.2", "10.0.0.3"]
    assert hosts.lookup("web", socket.AF_INET) == ["10.0.0.2"]
    assert hosts.lookup("web.test", socket.AF_INET6) == ["2001:db8::2"]
    assert hosts.lookup("commented.test", socket.AF_INET) == []
    assert hosts.lookup("name.test", socket.AF_INET) == []
    assert len(hosts) == 3
    assert len(HostsFile.read("")) == 0
    assert len(HostsFile.read("/nonexistent/hosts")) == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ent(name: str, ttl: int = 60) -> HostEnt:
    return HostEnt(name, socket.AF_INET, ("10.0.0.1",), ttl)


def test_the_cache_keeps_an_answer_for_its_ttl_and_no_longer() -> None:
    clock = FakeClock()
    cache = HostCache(8, 3600, clock)
    cache.put(ent("a.test", 60))
    hit = cache.get("a.test", socket.AF_INET)
    assert hit is not None and hit.source == "cache" and hit.ttl == 60
    assert cache.get("a.test", socket.AF_INET6) is None
    clock.now += 59.5
    assert cache.get("a.test", socket.AF_INET).ttl == 1
    clock.now += 1
    assert cache.get("a.test", socket.AF_INET) is None
    assert len(cache) == 0


def test_the_cache_caps_ttls_drops_the_least_recently_used_and_skips_failures() -> None:
    from ats_cffi.dns import DNSError

    clock = FakeClock()
    cache = HostCache(2, 10, clock)
    cache.put(ent("a.test", 86400))
    assert cache.get("a.test", socket.AF_INET).ttl == 10
    cache.put(ent("b.test"))
    cache.get("a.test", socket.AF_INET)  # a is now the most recently used
    cache.put(ent("c.test"))
    assert cache.get("b.test", socket.AF_INET) is None
    assert cache.get("a.test", socket.AF_INET) is not None
    cache.put(ent("zero.test", 0))
    cache.put(HostEnt.failure("bad.test", socket.AF_INET, DNSError.NXDOMAIN))
    assert cache.get("zero.test", socket.AF_INET) is None
    assert cache.get("bad.test", socket.AF_INET) is None
    off = HostCache(0, 10, clock)
    off.put(ent("a.test"))
    assert off.get("a.test", socket.AF_INET) is None


def test_stats_are_kept_per_handler_and_summed_on_read(dns_server, start_dns) -> None:
    from ats_cffi.eventsystem import Continuation

    from .conftest import Recorder

    server = dns_server({"x.test": {"A": ["10.0.0.1"]}, "y.test": {"A": ["10.0.0.2"]}})
    start_dns(server, n_threads=2)
    rec = Recorder()
    for t, name in zip(net_processor.netthreads, ("x.test", "y.test")):
        t.schedule_imm_signal(
            Continuation(rec.mutex, lambda ev, e, n=name: dns_processor.gethostbyname(rec, n))
        )
    rec.wait(2)
    blocks = [h.stats for h in dns_processor.handlers.values()]
    i = STAT_NAMES.index("proxy.process.dns.lookup_successes")
    assert [b[i] for b in blocks] == [1, 1]
    assert dns_stats.get("proxy.process.dns.lookup_successes") == 2
    snap = dns_stats.snapshot()
    assert snap["proxy.process.dns.total_dns_lookups"] == 2
    dns_processor.stop()  # retired blocks keep their counts
    assert dns_stats.get("proxy.process.dns.lookup_successes") == 2
    with pytest.raises(KeyError):
        dns_stats.get("proxy.process.dns.nope")


def test_start_needs_the_net_processor_and_runs_once(dns_server, start_dns) -> None:
    with pytest.raises(RuntimeError, match="net_processor"):
        dns_processor.start()
    start_dns(dns_server({}))
    with pytest.raises(RuntimeError, match="already started"):
        dns_processor.start()
    dns_processor.stop()
    dns_processor.stop()  # a second stop does nothing
    assert not dns_processor.started


def test_stop_after_the_net_threads_ended_still_closes_every_socket(dns_server, start_dns) -> None:
    start_dns(dns_server({}), dns_server({}), n_threads=2)
    net_processor.shutdown()
    dns_processor.stop()  # the leak check of the suite verifies the sockets are closed
