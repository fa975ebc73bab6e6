"""The net stats of an asyncio application on Loop (``ats_cffi.asyncio.metrics``): the
counters move with a connection's life, and ``start_metrics_server`` serves ``/_stats`` and
``/metrics`` as the ``ats-cffi`` command does (same names, JSON document and Prometheus /
OpenMetrics text, which Prometheus' own parsers read). Clients are plain blocking sockets,
run off the loop (``asyncio.to_thread``)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import ats_cffi.asyncio as ats_asyncio
from ats_cffi.apps.http_responses import OPENMETRICS_TEXT, PROMETHEUS_TEXT
from ats_cffi.asyncio.metrics import MAX_REQUEST
from ats_cffi.net.stats import SSL_STAT_NAMES, STAT_NAMES
from tests.asyncio.test_server_options import until

OPEN = "proxy.process.net.connections_currently_open"
READ_BYTES = "proxy.process.net.read_bytes"
CALLS_TO_READ = "proxy.process.net.calls_to_read"
WRITE_BYTES = "proxy.process.net.write_bytes"
CALLS_TO_WRITE = "proxy.process.net.calls_to_write"
ACCEPTS = "proxy.process.tcp.total_accepts"
OPENMETRICS_ACCEPT = (  # what Prometheus 3 sends when it scrapes
    "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


class Echo(asyncio.Protocol):
    lost: asyncio.Event

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        Echo.lost.set()


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split_responses(data: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """(status line, headers by lower-case name, body) of each response in ``data``; a
    response to ``HEAD`` must be the last (its Content-Length has no body after it)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status, *lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        n = int(headers["content-length"])
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def get(port: int, path: str, accept: str | None = None) -> tuple[str, dict[str, str], bytes]:
    extra = f"Accept: {accept}\r\n" if accept else ""
    request = f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{extra}\r\n"
    (response,) = split_responses(exchange(port, request.encode()))
    return response


async def scrape_json(port: int) -> dict[str, int]:
    status, headers, body = await asyncio.to_thread(get, port, "/_stats")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["service"] == "asyncio"
    return doc["global"]  # type: ignore[no-any-return]


def echo_once(port: int, payload: bytes) -> socket.socket:
    """A connection to the echo on ``port`` that carried ``payload`` there and back (open)."""
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    c.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += c.recv(65536)
    assert got == payload
    return c


def test_a_connection_served_and_closed_shows_in_the_stats_pages() -> None:
    payload = b"x" * 5000

    async def main() -> None:
        Echo.lost = asyncio.Event()
        echo = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        metrics = await ats_asyncio.start_metrics_server("127.0.0.1", 0)
        echo_port = echo.sockets[0].getsockname()[1]
        port = metrics.sockets[0].getsockname()[1]
        before = await scrape_json(port)  # (each page counts its own scrape open)
        assert set(before) == {*STAT_NAMES, *SSL_STAT_NAMES}
        client = await asyncio.to_thread(echo_once, echo_port, payload)
        during = await scrape_json(port)
        assert during[OPEN] == before[OPEN] + 1
        client.close()
        await asyncio.wait_for(Echo.lost.wait(), 10)
        after = await scrape_json(port)
        assert after[OPEN] == before[OPEN]
        assert after[READ_BYTES] >= before[READ_BYTES] + len(payload)  # + the scrapes'
        assert after[CALLS_TO_READ] > during[CALLS_TO_READ] > before[CALLS_TO_READ]
        # The echo's writes (sent at once by transport.write) and the pages' count too.
        assert during[WRITE_BYTES] >= before[WRITE_BYTES] + len(payload)
        assert during[CALLS_TO_WRITE] > before[CALLS_TO_WRITE]
        assert during[ACCEPTS] >= before[ACCEPTS] + 2  # the echo's client, the scrape
        # stats() is the same registry: read on the loop, no scrape open now.
        await until(lambda: ats_asyncio.stats()[OPEN] == before[OPEN] - 1, "the scrape closed")
        assert ats_asyncio.stats()[READ_BYTES] >= after[READ_BYTES]
        for srv in (echo, metrics):
            srv.close()
            await srv.wait_closed()

    ats_asyncio.run(main())


def families(parse: Any, text: str) -> dict[str, tuple[str, dict[str, float]]]:
    """family name -> (type, {sample name: value}), each family once."""
    out: dict[str, tuple[str, dict[str, float]]] = {}
    for family in parse(text):
        assert family.name not in out, f"{family.name} twice"
        out[family.name] = (family.type, {s.name: s.value for s in family.samples})
    return out


def check_families(fams: dict[str, tuple[str, dict[str, float]]], open_now: int) -> None:
    assert len(fams) == len(STAT_NAMES) + len(SSL_STAT_NAMES)
    for name, (kind, samples) in fams.items():
        assert list(samples) == [name + "_total" if kind == "counter" else name], name
    assert fams["proxy_process_net_read_bytes"][0] == "counter"
    assert fams["proxy_process_tcp_accepts"][0] == "counter"  # (total_accepts)
    kind, samples = fams["proxy_process_net_connections_currently_open"]
    assert (kind, samples) == ("gauge", {"proxy_process_net_connections_currently_open": open_now})


def test_metrics_parse_as_prometheus_text_and_as_openmetrics() -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as parse_openmetrics,
    )
    from prometheus_client.parser import text_string_to_metric_families as parse_text

    async def main() -> None:
        metrics = await ats_asyncio.start_metrics_server("127.0.0.1", 0)
        port = metrics.sockets[0].getsockname()[1]
        open_now = ats_asyncio.stats()[OPEN] + 1  # the scrape's own connection
        _, headers, body = await asyncio.to_thread(get, port, "/metrics")
        assert headers["content-type"] == PROMETHEUS_TEXT  # what curl gets
        text = body.decode()
        assert "# EOF" not in text
        assert "\n# HELP proxy_process_net_read_bytes_total proxy.process.net.read_bytes\n" in text
        check_families(families(parse_text, text), open_now)
        for accept in (OPENMETRICS_ACCEPT, "application/openmetrics-text"):
            _, headers, body = await asyncio.to_thread(get, port, "/metrics?x=1", accept)
            assert headers["content-type"] == OPENMETRICS_TEXT
            text = body.decode()
            assert text.endswith("\n# EOF\n")
            assert "\n# UNIT proxy_process_net_read_bytes bytes\n" in text
            check_families(families(parse_openmetrics, text), open_now)
        _, headers, _ = await asyncio.to_thread(get, port, "/metrics", "text/plain, */*")
        assert headers["content-type"] == PROMETHEUS_TEXT
        metrics.close()
        await metrics.wait_closed()

    ats_asyncio.run(main())


def test_requests_on_one_connection_are_answered_in_order_then_closed() -> None:
    pipelined = (
        b"GET /_stats HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"HEAD /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        b"GET /_stats HTTP/1.1\r\nHost: a\r\n\r\n"  # after the close: not answered
    )

    async def main() -> None:
        metrics = await ats_asyncio.start_metrics_server("127.0.0.1", 0, service="web")
        port = metrics.sockets[0].getsockname()[1]
        data = await asyncio.to_thread(exchange, port, pipelined)
        stats, missing, post, head = split_responses(data)
        assert stats[0] == "HTTP/1.1 200 OK"
        assert stats[1]["connection"] == "keep-alive"
        assert stats[1]["server"] == "ats-cffi"
        assert json.loads(stats[2])["service"] == "web"
        assert (missing[0], missing[2]) == ("HTTP/1.1 404 Not Found", b"Not Found\n")
        assert post[0] == "HTTP/1.1 405 Method Not Allowed"
        assert post[1]["allow"] == "GET, HEAD"
        assert head[0] == "HTTP/1.1 200 OK"
        assert head[1]["connection"] == "close"
        assert head[1]["content-type"] == PROMETHEUS_TEXT
        assert int(head[1]["content-length"]) > 0 and head[2] == b""
        # A malformed request, and one that never ends its head, get an error and the close.
        bad = await asyncio.to_thread(exchange, port, b"NOT HTTP\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        huge = b"GET /_stats HTTP/1.1\r\nX-Pad: "  # one byte over, all read: no reset
        huge += b"p" * (MAX_REQUEST + 1 - len(huge))
        big = await asyncio.to_thread(exchange, port, huge)
        assert big.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        metrics.close()
        await metrics.wait_closed()

    ats_asyncio.run(main())


def test_the_page_functions_render_the_commands_format_off_the_loop() -> None:
    from ats_cffi.apps.stats import prometheus_name

    values = ats_asyncio.stats()
    assert list(values) == [*STAT_NAMES, *SSL_STAT_NAMES]
    doc = json.loads(ats_asyncio.stats_json("worker-pool"))
    assert (doc["service"], doc["worker"]) == ("worker-pool", None)
    assert list(doc["global"]) == list(values)
    text = ats_asyncio.metrics_text().decode()
    samples = [line.split(" ")[0] for line in text.splitlines() if not line.startswith("#")]
    assert samples == [prometheus_name(n) for n in values]
    assert ats_asyncio.metrics_text(openmetrics=True).endswith(b"\n# EOF\n")
