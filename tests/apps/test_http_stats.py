"""``ats-cffi http``'s counters add up (every request answered is counted once, in
``incoming_requests`` and in its status class), and ``/metrics`` is Prometheus text that
Prometheus' own parsers read: counters named ``..._total``, gauges not, the 0.0.4 text
format by default and OpenMetrics to a scraper that asks for it (``Accept``)."""

from __future__ import annotations

import http.client

import pytest

from .conftest import connect, get_json
from .test_http import _read_response

CLASSES = [f"proxy.process.http.{c}xx_responses" for c in (2, 3, 4, 5)]
OPENMETRICS_ACCEPT = (
    # What Prometheus 3 sends when it scrapes.
    "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


def _answer(port: int, request: bytes) -> bytes:
    """The status line of the answer to ``request``, sent on a connection of its own."""
    with connect(port) as s:
        s.sendall(request)
        head, _ = _read_response(s)
    return head.split(b"\r\n", 1)[0]


def test_every_request_answered_is_counted_once_and_in_one_status_class(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    n_garbage, m_good = 3, 4
    for _ in range(n_garbage):  # each on its own connection: a 400 closes
        assert _answer(srv.port, b"GARBAGE\r\n\r\n") == b"HTTP/1.1 400 Bad Request"
    with connect(srv.port) as s:
        for _ in range(m_good):
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert _read_response(s)[0].startswith(b"HTTP/1.1 200 OK")
    g = get_json(srv.port)["global"]  # (this request is counted with its answer: after)
    assert g["proxy.process.http.incoming_requests"] == n_garbage + m_good
    assert sum(g[c] for c in CLASSES) == n_garbage + m_good
    assert g["proxy.process.http.400_responses"] == n_garbage
    assert g["proxy.process.http.4xx_responses"] == n_garbage


def test_refusals_of_every_kind_add_up_too(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    refusals = [
        (b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999\r\n\r\n", b"413"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n\r\n", b"417"),
        (b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n", b"404"),
        (b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n", b"405"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 140_000 + b"\r\n\r\n", b"431"),
        (b"GET /_stats HTTP/1.1\r\nHost: a\r\n\r\n", b"200"),
    ]
    for request, status in refusals:
        assert _answer(srv.port, request).split(b" ")[1] == status
    g = get_json(srv.port)["global"]
    assert g["proxy.process.http.incoming_requests"] == len(refusals)
    assert g["proxy.process.http.4xx_responses"] == len(refusals) - 1
    assert sum(g[c] for c in CLASSES) == len(refusals)


def _scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    """``/metrics``: (its Content-Type, its text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.getheader("Content-Type"), resp.read().decode()
    finally:
        conn.close()


def _families(parse, text: str) -> dict[str, tuple[str, dict[str, float]]]:  # type: ignore[no-untyped-def]
    """family name -> (type, {sample name: value}), each family once."""
    out: dict[str, tuple[str, dict[str, float]]] = {}
    for family in parse(text):
        assert family.name not in out, f"{family.name} twice"
        out[family.name] = (family.type, {s.name: s.value for s in family.samples})
    return out


def _check_names(families: dict[str, tuple[str, dict[str, float]]]) -> None:
    for name, (kind, samples) in families.items():
        assert kind in ("counter", "gauge"), f"{name}: {kind}"
        # One sample each; a counter's is named ..._total, a gauge's is its family's name.
        assert list(samples) == [name + "_total" if kind == "counter" else name], name
        assert not name.endswith("_total")
    assert families["proxy_process_net_read_bytes"][0] == "counter"
    assert families["proxy_process_net_write_bytes"][0] == "counter"
    assert families["proxy_process_net_connections_currently_open"][0] == "gauge"
    assert families["proxy_process_http_current_client_connections"][0] == "gauge"
    assert families["proxy_process_http_incoming_requests"][0] == "counter"
    assert families["proxy_process_tcp_accepts"][0] == "counter"  # (total_accepts)


def test_metrics_parse_as_prometheus_text_and_as_openmetrics(cli) -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as parse_openmetrics,
    )
    from prometheus_client.parser import text_string_to_metric_families as parse_text

    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    with connect(srv.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        _read_response(s)
        ctype, text = _scrape(srv.port)  # what a plain client (curl) gets
        assert ctype == "text/plain; version=0.0.4; charset=utf-8"
        assert "# EOF" not in text
        assert "\nproxy_process_net_read_bytes_total " in text
        assert "\n# TYPE proxy_process_net_read_bytes_total counter\n" in text
        families = _families(parse_text, text)
        _check_names(families)
        assert families["proxy_process_http_incoming_requests"][1] == {
            "proxy_process_http_incoming_requests_total": 1.0
        }
        assert families["proxy_process_net_connections_currently_open"][1] == {
            "proxy_process_net_connections_currently_open": 2.0  # this one and the scrape's
        }
        for accept in (OPENMETRICS_ACCEPT, "application/openmetrics-text"):
            ctype, text = _scrape(srv.port, accept)
            assert ctype == "application/openmetrics-text; version=1.0.0; charset=utf-8"
            assert text.endswith("\n# EOF\n")
            assert "\n# UNIT proxy_process_net_read_bytes bytes\n" in text
            _check_names(_families(parse_openmetrics, text))
        # Text is preferred where the client says so, or does not name OpenMetrics.
        for accept in ("text/plain;q=1,application/openmetrics-text;q=0.5", "*/*", "text/html"):
            assert _scrape(srv.port, accept)[0].startswith("text/plain; version=0.0.4")


def test_every_stat_of_every_layer_renders_in_both_formats() -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as parse_openmetrics,
    )
    from prometheus_client.parser import text_string_to_metric_families as parse_text

    from ats_cffi.apps.echo import EchoService
    from ats_cffi.apps.http import HttpService
    from ats_cffi.apps.stats import is_gauge, render_prometheus
    from ats_cffi.apps.tunnel import TunnelService
    from ats_cffi.dns.stats import STAT_NAMES as DNS_NAMES
    from ats_cffi.net.stats import STAT_NAMES as NET_NAMES

    names = [*NET_NAMES, *DNS_NAMES]
    for service in (HttpService, EchoService, TunnelService):
        names += service.stat_names
    values = {name: i for i, name in enumerate(names)}
    gauges = {n for n in names if is_gauge(n)}
    assert gauges == {
        "proxy.process.net.connections_currently_open",
        "proxy.process.net.accepts_currently_open",
        "proxy.process.dns.in_flight",
        "proxy.process.http.current_client_connections",
        "proxy.process.echo.current_client_connections",
        "proxy.process.tunnel.current_client_connections_blind_tcp",
    }
    text = render_prometheus(values).decode()
    openmetrics = render_prometheus(values, openmetrics=True).decode()
    for parse, page in ((parse_text, text), (parse_openmetrics, openmetrics)):
        families = _families(parse, page)
        assert len(families) == len(names)  # no two stats share a name
        assert {f for f, (kind, _) in families.items() if kind == "gauge"} == {
            n.replace(".", "_") for n in gauges
        }
        assert sum(v for _, samples in families.values() for v in samples.values()) == sum(
            values.values()
        )
    help_line = "# HELP proxy_process_net_read_bytes_total proxy.process.net.read_bytes\n"
    assert help_line in text  # the name in /_stats (and ATS)


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (b"application/openmetrics-text", True),
        (b"Application/OpenMetrics-Text; version=1.0.0", True),
        (OPENMETRICS_ACCEPT.encode(), True),
        (b"text/plain, application/openmetrics-text", True),  # equal q: OpenMetrics
        (b"application/openmetrics-text;q=0.2, text/plain;q=0.9", False),
        (b"application/openmetrics-text;q=0", False),
        (b"application/openmetrics-text;q=bad", False),
        (b"*/*", False),
        (b"", False),
    ],
)
def test_which_accept_values_get_openmetrics(accept: bytes, openmetrics: bool) -> None:
    from ats_cffi.apps.http_responses import wants_openmetrics

    assert wants_openmetrics(accept) is openmetrics
