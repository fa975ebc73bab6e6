"""Bad input to the DNS layer is refused at the call, naming the call and the argument (or the
record), before anything is sent to a name server or torn down (DESIGN.md §10)."""

from __future__ import annotations

import socket

import pytest

from ats_cffi.dns import dns_config, dns_processor
from ats_cffi.dns.config import DNSConfig, parse_nameservers
from ats_cffi.net import net_processor
from ats_cffi.net.codes import NET_EVENT_OPEN

from .conftest import Recorder

RECORDS = {
    "good.test": {"A": ["10.0.0.1"]},
    "under_score.test": {"A": ["10.0.0.2"]},
    "x-y.test": {"A": ["10.0.0.3"]},
}
LONG = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters, the longest name


def short_id(value: object) -> str:
    """A test id that is not a 400-digit number."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"int{value.bit_length()}bits"
    return repr(value)[:24]


def resolve(name: str, family: int = socket.AF_INET):
    rec = Recorder()
    dns_processor.gethostbyname(rec, name, family)
    return rec.result()


# ------------------------------------------------------------------ config records


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("proxy.config.dns.lookup_timeout", float("inf")),
        ("proxy.config.dns.lookup_timeout", 2**63),
        ("proxy.config.dns.lookup_timeout", 10**400),
        ("proxy.config.dns.lookup_timeout", 3601),
        ("proxy.config.dns.cache_ttl_max", float("inf")),
        ("proxy.config.dns.cache_ttl_max", 10**400),
        ("proxy.config.dns.retries", float("inf")),
        ("proxy.config.dns.max_dns_in_flight", float("inf")),
        ("proxy.config.dns.max_dns_in_flight", 2**63),
        ("proxy.config.dns.cache_size", float("inf")),
        ("proxy.config.dns.cache_size", 10**400),
        ("proxy.config.dns.connection_mode", float("inf")),
        ("proxy.config.dns.round_robin_nameservers", float("-inf")),
        ("proxy.config.dns.retries", float("nan")),
    ],
    ids=short_id,
)
def test_number_records_refuse_non_finite_and_huge_values(key: str, value: float) -> None:
    c = DNSConfig()
    before = c.get(key)
    with pytest.raises(ValueError, match=key):
        c.set(key, value)
    assert c.get(key) == before


def test_lookup_timeout_keeps_a_finite_maximum() -> None:
    c = DNSConfig()
    c.set("proxy.config.dns.lookup_timeout", 3600)
    assert c.lookup_timeout == 3600.0
    c.set("proxy.config.dns.cache_size", 10**6)
    c.set("proxy.config.dns.cache_ttl_max", 2**31 - 1)
    assert c.cache_size == 10**6 and c.cache_ttl_max == float(2**31 - 1)


@pytest.mark.parametrize(
    "key", ["proxy.config.dns.resolv_conf", "proxy.config.hostdb.host_file.path"]
)
def test_path_records_refuse_a_nul_at_set(key: str) -> None:
    c = DNSConfig()
    before = c.get(key)
    with pytest.raises(ValueError, match=key):
        c.set(key, "/tmp/x\0y")
    assert c.get(key) == before


@pytest.mark.parametrize(
    "port", ["\u00b2", "\u0665\u0663", "\uff15\uff13", "9" * 5000], ids=short_id
)
def test_nameserver_ports_take_ascii_digits_only(port: str) -> None:
    with pytest.raises(ValueError, match="proxy.config.dns.nameservers: bad port"):
        parse_nameservers(f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="proxy.config.dns.nameservers"):
        parse_nameservers(f"[::1]:{port}")


# ------------------------------------------------------------------ host names

BAD_NAMES = [
    "good.test\0evil",
    "a b.test",
    "\n",
    "good.test\n",
    "tab\t.test",
    "\x7f.test",
    "\\000.test",
    "a\\.b.test",
    "a/b.test",
    "a@b.test",
    "*.test",
    "a..b",
    ".good.test",
    "good.test..",
    "..",
    "b\u00fccher.test",  # non-ASCII: refused, not IDNA-encoded
    "a\u00a0b.test",  # IDNA 2003 would map it to a space
    "\uff41.test",  # fullwidth a
    "good\u3002test",  # ideographic full stop
    "x" * 64 + ".test",
    LONG + "c",
    "[::1]",
    "::1%lo",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=short_id)
def test_gethostbyname_refuses_bad_host_names_at_the_call(dns_server, start_dns, name) -> None:
    server = dns_server(RECORDS)
    start_dns(server)
    rec = Recorder()
    with pytest.raises(ValueError, match="gethostbyname: name"):
        dns_processor.gethostbyname(rec, name)
    assert resolve("good.test").addrs == ("10.0.0.1",)
    assert server.queries == [("good.test", "A", "udp")]  # nothing else was sent
    assert rec.events == []


def test_gethostbyname_accepts_every_valid_form(dns_server, start_dns) -> None:
    server = dns_server({**RECORDS, LONG: {"A": ["10.0.0.4"]}})
    start_dns(server)
    assert resolve("under_score.test").addrs == ("10.0.0.2",)
    assert resolve("x-y.test.").addrs == ("10.0.0.3",)  # one trailing dot
    assert resolve("GOOD.Test").addrs == ("10.0.0.1",)
    assert resolve(LONG + ".").addrs == ("10.0.0.4",)
    assert resolve("127.0.0.9").addrs == ("127.0.0.9",)  # literals are answered as themselves
    assert resolve("::1", socket.AF_INET6).addrs == ("::1",)
    assert [q[0] for q in server.queries] == ["under_score.test", "x-y.test", "good.test", LONG]


@pytest.mark.parametrize("family", [False, True, 2.0])
def test_gethostbyname_refuses_a_family_that_is_not_an_int(dns_server, start_dns, family) -> None:
    start_dns(dns_server(RECORDS))
    with pytest.raises(ValueError, match="gethostbyname: family"):
        dns_processor.gethostbyname(Recorder(), "good.test", family)


@pytest.mark.parametrize(
    "host", ["a\0b.test", "a b.test", "a\\.b.test", "good.test..", "\u00e9.test"]
)
def test_connect_re_refuses_a_bad_host_name_naming_the_address(
    dns_server, start_dns, listen, host
) -> None:
    server = dns_server({"good.test": {"A": ["127.0.0.1"]}})
    _, acceptor, port = listen()
    start_dns(server)
    rec = Recorder()
    with pytest.raises(ValueError, match=rf"connect_re: addr \(.*, {port}\)"):
        net_processor.connect_re(rec, (host, port))
    good = Recorder()
    net_processor.connect_re(good, ("good.test", port))
    event, vc = good.wait()[0]
    assert event == NET_EVENT_OPEN
    acceptor.wait()
    vc.do_io_close()
    assert server.queries == [("good.test", "A", "udp")]
    assert rec.events == []


# ------------------------------------------------------------------ start and stop


@pytest.mark.parametrize(
    ("timeout", "exc"),
    [(float("nan"), ValueError), (-2, ValueError), (0, ValueError), (-0.5, ValueError),
     ("x", TypeError), (b"1", TypeError), (True, TypeError)],
    ids=short_id,
)  # fmt: skip
def test_stop_checks_timeout_before_stopping_anything(dns_server, start_dns, timeout, exc) -> None:
    start_dns(dns_server(RECORDS))
    with pytest.raises(exc, match="dns_processor.stop: timeout"):
        dns_processor.stop(timeout)
    assert dns_processor.started and net_processor.host_resolver is dns_processor
    assert resolve("good.test").addrs == ("10.0.0.1",)
    dns_processor.stop(2.0)
    assert not dns_processor.started


@pytest.mark.parametrize("timeout", [None, -1, float("inf"), 10**400], ids=short_id)
def test_stop_takes_no_limit_as_the_event_processor_does(dns_server, start_dns, timeout) -> None:
    start_dns(dns_server(RECORDS))
    dns_processor.stop(timeout)
    assert not dns_processor.started and net_processor.host_resolver is None


@pytest.mark.parametrize("processor", ["x", 1, object()])
def test_start_refuses_a_processor_of_another_type(net, processor) -> None:
    dns_config.set("nameservers", [("127.0.0.1", 9)])
    dns_config.set("host_file_path", "")
    try:
        with pytest.raises(TypeError, match="dns_processor.start: processor"):
            dns_processor.start(processor)
        assert not dns_processor.started
    finally:
        dns_config.reset()
