"""``ats-cffi http``: keep-alive with real clients (http.client, curl), the stats page in
JSON and Prometheus form, errors, pipelining."""

from __future__ import annotations

import http.client
import json
import random
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from tests.conftest import wait_until
from tests.net.conftest import asleep_in_the_kernel, unacked_bytes

from .conftest import connect, get_json

HELLO = b"Hello, World!"


def _read_response(s: socket.socket) -> tuple[bytes, bytes]:
    """One response (status line + headers, body by Content-Length) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    n = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < n:
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    assert len(body) == n, "more bytes than one response"
    return head, body


def test_keep_alive_requests_and_stats_that_match_them(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        first_sock = None
        for _ in range(3):
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("Content-Type").startswith("text/plain")
            assert resp.read() == HELLO
            first_sock = first_sock or conn.sock
            assert conn.sock is first_sock  # the same connection each time: keep-alive
        conn.request("GET", "/_stats?x=1")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "application/json"
        doc = json.loads(resp.read())
        assert conn.sock is first_sock
    finally:
        conn.close()
    g = doc["global"]
    assert doc["service"] == "http" and doc["pid"] == srv.pid
    assert g["proxy.process.tcp.total_accepts"] == 1
    assert g["proxy.process.net.connections_currently_open"] == 1
    assert g["proxy.process.http.total_client_connections"] == 1
    assert g["proxy.process.http.current_client_connections"] == 1
    # Each request counted with its answer, as its status class: the stats request later.
    assert g["proxy.process.http.incoming_requests"] == 3
    assert g["proxy.process.http.2xx_responses"] == 3
    assert g["proxy.process.http.400_responses"] == 0
    assert g["proxy.process.net.read_bytes"] > 0 and g["proxy.process.net.write_bytes"] > 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_reuses_the_connection_and_reads_the_metrics(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    base = f"http://127.0.0.1:{srv.port}"
    out = subprocess.run(
        ["curl", "-sS", "-v", f"{base}/", f"{base}/", f"{base}/metrics"],
        capture_output=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(HELLO + HELLO)
    assert b"Re-using existing connection" in out.stderr
    metrics = out.stdout[2 * len(HELLO) :].decode()
    values = {}
    types = {}
    for line in metrics.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif not line.startswith("# HELP "):
            name, value = line.split()
            assert name in types, f"{name} has no TYPE line before it"
            values[name] = int(value)
    assert types["proxy_process_net_connections_currently_open"] == "gauge"
    assert types["proxy_process_net_read_bytes_total"] == "counter"
    assert values["proxy_process_tcp_accepts_total"] == 1
    assert values["proxy_process_http_incoming_requests_total"] == 2  # the page's own later
    assert values["proxy_process_http_2xx_responses_total"] == 2


def test_garbage_gets_400_and_a_close(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    with connect(srv.port) as s:
        s.sendall(b"GARBAGE\r\n\r\nmore garbage after it")
        head, body = _read_response(s)
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"\r\nConnection: close" in head
        assert s.recv(100) == b""  # closed after the answer
    g = get_json(srv.port)["global"]
    assert g["proxy.process.http.400_responses"] == 1


def _split(data: bytes, bodiless: set[int]) -> list[tuple[bytes, bytes]]:
    """Cut a stream of responses; those at the indexes in ``bodiless`` answer a HEAD."""
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        n = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        if len(out) in bodiless:
            n = 0
        out.append((head, data[:n]))
        data = data[n:]
    return out


def test_pipelined_requests_are_answered_in_order(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    with connect(srv.port) as s:
        s.sendall(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    (h1, b1), (h2, b2), (h3, _), (h4, _), (h5, b5) = _split(data, bodiless={1})
    assert h1.startswith(b"HTTP/1.1 200 OK") and b1 == HELLO
    # HEAD: the GET's headers (Content-Length included), no body.
    assert h2.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 13" in h2 and b2 == b""
    assert h3.startswith(b"HTTP/1.1 404 Not Found")
    assert h4.startswith(b"HTTP/1.1 405 Method Not Allowed") and b"Allow: GET, HEAD" in h4
    assert h5.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in h5 and b5 == HELLO


def _random_requests(rng: random.Random, n: int) -> tuple[list[bytes], list[bytes], set[int]]:
    """``n`` requests of every kind the server tells apart, the last one closing: (the
    requests, the status expected for each, the indexes of the HEAD requests)."""
    out, statuses, heads = [], [], set()
    for i in range(n - 1):
        kind = rng.randrange(7)
        if kind == 0:
            query = b"q=" + b"v" * rng.randrange(2000)
            out.append(b"GET /?%s HTTP/1.1\r\nHost: a\r\n\r\n" % query)
            statuses.append(b"200")
        elif kind == 1:
            out.append(b"HEAD /?q=%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
            statuses.append(b"200")
            heads.add(i)
        elif kind == 2:
            out.append(b"GET /no/%s HTTP/1.1\r\nHost: a\r\n\r\n" % (b"p" * rng.randrange(3000)))
            statuses.append(b"404")
        elif kind == 3:
            body = rng.randbytes(rng.randrange(1, 5000))
            out.append(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            statuses.append(b"405")
        elif kind == 4:
            chunks = b"".join(
                b"%x\r\n%s\r\n" % (k, b"c" * k) for k in (rng.randrange(1, 900) for _ in range(3))
            )
            out.append(
                b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
            )
            statuses.append(b"405")
        elif kind == 5:
            pad = b"".join(b"X-%d: %s\r\n" % (k, b"h" * 500) for k in range(rng.randrange(80)))
            out.append(b"GET / HTTP/1.1\r\nHost: a\r\n" + pad + b"\r\n")
            statuses.append(b"200")
        else:
            out.append(b"GET /_stats HTTP/1.1\r\nHost: a\r\n\r\n")
            statuses.append(b"200")
    out.append(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    statuses.append(b"200")
    return out, statuses, heads


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_answers_do_not_depend_on_how_the_requests_are_cut(cli, seed: int) -> None:
    # Pipelined requests of every kind, each cut at random points and sent with pauses, so
    # that request lines, headers, bodies and chunks span reads (and some requests share
    # one): each gets its answer, in order.
    rng = random.Random(seed)
    requests, statuses, heads = _random_requests(rng, 60)
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()

    def send(s: socket.socket) -> None:
        for r in requests:
            cuts = sorted(rng.randrange(1, len(r)) for _ in range(rng.randrange(3)))
            for a, b in zip([0, *cuts], [*cuts, len(r)]):
                s.sendall(r[a:b])
                if rng.random() < 0.7:  # the next piece then comes in a segment of its own
                    wait_until(lambda: unacked_bytes(s) == 0, what="the piece acknowledged")

    with connect(srv.port) as s:
        sender = threading.Thread(target=send, args=(s,))
        sender.start()
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        sender.join(10)
    answers = _split(got, bodiless=heads)
    assert [h.split(b" ", 2)[1] for h, _ in answers] == statuses
    hello_bodies = [
        b
        for i, (h, b) in enumerate(answers)
        if h.startswith(b"HTTP/1.1 200 OK") and b"text/plain" in h and i not in heads
    ]
    assert hello_bodies and all(b == HELLO for b in hello_bodies)


@pytest.mark.parametrize(
    ("first", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"200 OK"),
        (b"GET / HTTP/1.0\r\n\r\n", b"200 OK"),
        (b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414 URI Too Long"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n", b"200 OK"),
        (b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: a\r\n\r\n", b"404 Not Found"),
    ],
    ids=["connection-close", "http10", "uri-too-long", "upgrade", "connect"],
)
def test_nothing_is_answered_after_a_response_that_closes(cli, first: bytes, status: bytes):
    # The bytes after the request come in the same read: another request, or junk.
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    for after in (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"x"):
        with connect(srv.port) as s:
            s.sendall(first + after)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.count(b"HTTP/1.1 ") == 1, data
        assert data.startswith(b"HTTP/1.1 " + status) and b"\r\nConnection: close\r\n" in data
    assert get_json(srv.port)["global"]["proxy.process.http.400_responses"] == 0


def test_http10_closes_unless_keep_alive_is_asked(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    with connect(srv.port) as s:
        s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head, body = _read_response(s)
        assert b"Connection: keep-alive" in head and body == HELLO
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        head, body = _read_response(s)
        assert b"Connection: close" in head and body == HELLO
        assert s.recv(100) == b""


def test_a_half_closed_client_still_gets_its_answer(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    with connect(srv.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        head, body = _read_response(s)
        assert body == HELLO
        assert s.recv(100) == b""


def test_a_client_that_asks_for_the_close_gets_a_fin_without_a_linger(cli) -> None:
    from ats_cffi.apps.http import LINGER

    current = "proxy.process.http.current_client_connections"
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()

    def open_sessions(want: int) -> int:
        # The stats request's own connection is one of them; bounded well under LINGER.
        seen = [-1]

        def check() -> bool:
            seen[0] = get_json(srv.port)["global"][current] - 1
            return seen[0] == want

        try:
            wait_until(check, LINGER / 2, f"{want} open sessions", interval=0.02)
        except AssertionError:
            pass  # the caller's assertion names the count seen
        return seen[0]

    with connect(srv.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        head, body = _read_response(s)
        assert b"Connection: close" in head and body == HELLO
        assert s.recv(100) == b""  # a FIN after the response (no reset)
        # The session is gone although this client has not closed: no linger.
        assert open_sessions(0) == 0
    # Bytes after the request: the session shuts its write side and lingers until the
    # client's FIN, discarding them.
    with connect(srv.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /x")
        head, body = _read_response(s)
        assert body == HELLO and s.recv(100) == b""
        assert open_sessions(1) == 1
    assert open_sessions(0) == 0


def test_a_pipelining_client_that_reads_late_gets_every_answer(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    n = 5000
    requests = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * (n - 1)
    requests += b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    with connect(srv.port, timeout=10) as s:
        sender = threading.Thread(target=s.sendall, args=(requests,))
        sender.start()
        # The server stops parsing while its answers wait for us: read only once the
        # sender is held back, or done.
        wait_until(
            lambda: asleep_in_the_kernel(sender) or not sender.is_alive(),
            what="the sender held back, or done",
        )
        data = bytearray()
        while chunk := s.recv(1 << 20):
            data += chunk
        sender.join(10)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == n
    assert data.endswith(HELLO)


def test_url_in_pieces_query_strings_and_targets_too_long(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    with connect(srv.port) as s:
        # The target arrives in two segments: the parser reports it in two pieces.
        s.sendall(b"GET /_st")
        # A gap for the server to read the first piece alone: its reads, in another
        # process, cannot be observed from here.
        time.sleep(0.2)
        s.sendall(b"ats?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        head, body = _read_response(s)
        assert head.startswith(b"HTTP/1.1 200 OK") and json.loads(body)["service"] == "http"
        s.sendall(b"GET /?a=b HTTP/1.1\r\nHost: a\r\n\r\n")
        head, body = _read_response(s)
        assert head.startswith(b"HTTP/1.1 200 OK") and body == HELLO
        s.sendall(b"HEAD /?a=b HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 13\r\n" in data
        assert data.endswith(b"\r\n\r\n")  # HEAD: no body
    for pieces in ([b"/" + b"a" * 9000], [b"/" + b"a" * 5000, b"b" * 5000]):
        with connect(srv.port) as s:
            s.sendall(b"GET " + pieces[0])
            for piece in pieces[1:]:
                time.sleep(0.2)  # a gap for the server to read the pieces apart (as above)
                s.sendall(piece)
            s.sendall(b" HTTP/1.1\r\nHost: a\r\n\r\n")
            head, body = _read_response(s)
            assert head.startswith(b"HTTP/1.1 414 URI Too Long")
            assert b"\r\nConnection: close" in head
            assert s.recv(100) == b""


def _refused(s: socket.socket, status: bytes) -> None:
    """The answer is ``status`` with a close, and then the connection ends."""
    head, _ = _read_response(s)
    assert head.startswith(b"HTTP/1.1 " + status), head
    assert b"\r\nConnection: close" in head
    s.settimeout(5.0)
    while s.recv(65536):  # the server discards what was still on its way, then closes
        pass


def test_a_request_head_over_max_head_gets_431_or_414_and_a_close(cli) -> None:
    from ats_cffi.apps.http import HTTP_BLOCK_SIZE as BLOCK_SIZE
    from ats_cffi.apps.http import MAX_HEAD

    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 990) for i in range(100))  # ~100 KiB
    assert len(pad) < MAX_HEAD - 1000
    # Past the limit by more than the block where the request began (not counted: MAX_HEAD).
    endless_pad = pad * ((MAX_HEAD + BLOCK_SIZE) // len(pad) + 1)
    with connect(srv.port) as s:
        # Big heads within the limit are served, one after another (each counted alone);
        # then one with a body; then one that never ends, on the same connection.
        for _ in range(3):
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n" + pad + b"\r\n")
            head, body = _read_response(s)
            assert head.startswith(b"HTTP/1.1 200 OK") and body == HELLO
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        assert _read_response(s)[0].startswith(b"HTTP/1.1 405")
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n" + endless_pad)
        _refused(s, b"431 Request Header Fields Too Large")
    with connect(srv.port) as s:  # a target that never ends
        s.sendall(b"GET /" + b"a" * (MAX_HEAD + BLOCK_SIZE + 1000))
        _refused(s, b"414 URI Too Long")
    g = get_json(srv.port)["global"]
    assert g["proxy.process.http.4xx_responses"] == 3


def test_a_body_over_max_body_gets_413_and_a_close(cli) -> None:
    from ats_cffi.apps.http import MAX_BODY

    srv = cli("http", "--listen", "127.0.0.1:0").wait_listening()
    with connect(srv.port) as s:  # a small body is read and the connection kept
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789")
        head, _ = _read_response(s)
        assert head.startswith(b"HTTP/1.1 405 Method Not Allowed")
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert _read_response(s)[1] == HELLO
    big = MAX_BODY + 200_000
    with connect(srv.port) as s:  # announced length over the limit: refused on the way
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (4 * big))
        s.sendall(b"b" * big)
        _refused(s, b"413 Content Too Large")
    chunk = b"%x\r\n%s\r\n" % (65536, b"c" * 65536)
    with connect(srv.port) as s:  # a chunked body that never ends
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.sendall(chunk * (big // 65536 + 1))
        _refused(s, b"413 Content Too Large")


# ---------------------------------------------------------------------- in process


def test_app_stats_add_up_the_counts_of_every_thread() -> None:
    from ats_cffi.apps.stats import AppStats

    stats = AppStats(("a", "b"))
    stats.incr("a")
    stats.incr("b", 5)

    def count() -> None:
        for _ in range(10_000):
            stats.incr("a")
        stats.incr("b", -1)  # a gauge may go down in a thread other than the one it rose in

    threads = [threading.Thread(target=count) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The threads are gone; what they counted stays.
    assert stats.snapshot() == {"a": 40_001, "b": 1}
    assert stats.get("a") == 40_001
    assert stats.per_thread.counts[stats.index("a")] == 1  # this thread's own block
    with pytest.raises(KeyError):
        stats.incr("c")


def test_the_cached_hello_response_is_the_one_respond_would_build() -> None:
    import email.utils

    from ats_cffi.apps import http_responses as app

    now = 1_700_000_000.25
    start, end, get, head, get_close, head_close = app.hello_responses(now)
    assert (start, end) == (1_700_000_000, 1_700_000_001)
    date = email.utils.formatdate(1_700_000_000, usegmt=True).encode()
    plain = (
        b"HTTP/1.1 200 OK\r\nServer: ats-cffi\r\nDate: " + date + b"\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 13\r\n\r\n"
    )
    assert app.response_head(200, app.TEXT, 13, date) == plain
    # A response that keeps the connection says so (to HTTP/1.1 clients too).
    expected = plain[:-2] + b"Connection: keep-alive\r\n\r\n"
    assert head == expected and get == expected + HELLO
    keep = b"Connection: keep-alive\r\n"
    assert app.response_head(200, app.TEXT, 13, date, conn=keep) == expected
    closing = plain[:-2] + b"Connection: close\r\n\r\n"
    assert head_close == closing and get_close == closing + HELLO
    conn = b"Connection: close\r\n"
    assert app.response_head(200, app.TEXT, 13, date, conn=conn) == closing
    # The next second has its own Date.
    later = app.hello_responses(now + 1)[2]
    assert later != get and email.utils.formatdate(now + 1, usegmt=True).encode() in later


class _FakeVC:
    """Enough of a UnixNetVConnection for a session driven by hand."""

    def __init__(self) -> None:
        from ats_cffi.eventsystem import VIO, VIOOp

        self.rvio, self.wvio = VIO(VIOOp.READ), VIO(VIOOp.WRITE)
        self.reenabled: list[object] = []
        self.shut = False
        self.closed = False
        #: What ``input_pending`` answers: bytes left in the socket.
        self.pending = False
        #: The timeouts set (0: none), and how many times each was set or cancelled.
        self.inactivity_timeout_in = 0.0
        self.active_timeout_in = 0.0
        self.timeout_calls = 0
        #: The connection queue the session put the VC in last (net/queues.py), if any.
        self.queue = ""

    def set_inactivity_timeout(self, t: float) -> None:
        self.inactivity_timeout_in = t
        self.timeout_calls += 1

    def set_active_timeout(self, t: float) -> None:
        self.active_timeout_in = t
        self.timeout_calls += 1

    def cancel_active_timeout(self) -> None:
        self.active_timeout_in = 0.0
        self.timeout_calls += 1

    def do_io_read(self, cont, nbytes, buf):  # type: ignore[no-untyped-def]
        v = self.rvio
        v.cont, v.nbytes, v.buffer, v.vc_server, v.mutex = cont, nbytes, buf, self, cont.mutex
        return v

    def do_io_write(self, cont, nbytes, reader):  # type: ignore[no-untyped-def]
        v = self.wvio
        v.cont, v.nbytes, v.buffer, v.vc_server, v.mutex = cont, nbytes, reader, self, cont.mutex
        return v

    def reenable(self, vio) -> None:  # type: ignore[no-untyped-def]
        self.reenabled.append(vio)

    def do_io_shutdown(self, how: int) -> None:
        self.shut = True

    def do_io_close(self) -> None:
        self.closed = True

    def input_pending(self) -> bool:
        return self.pending

    def add_to_active_queue(self) -> bool:
        self.queue = "active"
        return True

    def add_to_keep_alive_queue(self) -> None:
        self.queue = "keep-alive"

    def send(self, n: int) -> bytes:
        """The VC writes ``n`` bytes of the write VIO's reader to the net."""
        reader = self.wvio.buffer
        out = reader.read(n)
        self.wvio.ndone += len(out)
        return out


def test_the_write_vio_covers_the_responses_queued_and_back_pressure_resumes() -> None:
    from ats_cffi.apps import http as app
    from ats_cffi.apps.service import WATER_MARK
    from ats_cffi.eventsystem import EventCode

    service = app.HttpService()
    vc = _FakeVC()
    session = app.HttpSession(service, vc)  # type: ignore[arg-type]
    assert vc.wvio.nbytes == 0  # nothing to write yet
    get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"

    session.rbuf.write(get)
    session.handle_event(EventCode.VC_EVENT_READ_READY, vc.rvio)
    # One response queued: the write VIO ends there and was re-enabled.
    assert vc.reenabled == [vc.wvio] and vc.wvio.ntodo() == session.wbuf.max_read_avail() > 0
    out = vc.send(vc.wvio.ntodo())
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(HELLO)
    assert vc.queue == "active"
    session.handle_event(EventCode.VC_EVENT_WRITE_COMPLETE, vc.wvio)
    assert not session.closing and not session.lingering and not vc.shut  # kept alive
    assert vc.queue == "keep-alive"

    # A client that pipelines more than the water mark's worth of responses and reads none.
    n = 5000
    session.rbuf.write(get * n)
    vc.reenabled.clear()
    session.handle_event(EventCode.VC_EVENT_READ_READY, vc.rvio)
    # Parsing paused (between two read blocks) once the responses passed the water mark.
    assert session.rreader.read_avail() > 0 and vc.wvio.ntodo() > WATER_MARK
    assert vc.reenabled == [vc.wvio]
    sent = bytearray()
    resumed = 0
    while vc.wvio.ntodo():
        sent += vc.send(20_000)
        vc.reenabled.clear()
        event = EventCode.VC_EVENT_WRITE_READY
        if not vc.wvio.ntodo():
            event = EventCode.VC_EVENT_WRITE_COMPLETE
        unread = session.rreader.read_avail()
        session.handle_event(event, vc.wvio)
        # Once the client caught up, parsing resumes (more responses: the write VIO grows)
        # and the read VIO, stopped by its full buffer, is re-enabled.
        parsed = session.rreader.read_avail() < unread
        assert (vc.rvio in vc.reenabled) == parsed == (vc.wvio in vc.reenabled)
        resumed += parsed
    assert resumed > 1
    answered = sent.count(b"HTTP/1.1 200 OK\r\n")
    assert answered == n and not session.rreader.read_avail()
    assert service.stats.get(app.REQUESTS) == n + 1 == service.stats.get(app.R2XX)

    # Connection: close: the write VIO ends after it, then the session closes (the client
    # asked for it and left nothing unread: test_when_a_closing_session_lingers).
    session.rbuf.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    session.handle_event(EventCode.VC_EVENT_READ_READY, vc.rvio)
    assert session.closing and not session.lingering
    assert b"Connection: close" in vc.send(vc.wvio.ntodo())
    session.handle_event(EventCode.VC_EVENT_WRITE_COMPLETE, vc.wvio)
    assert session.closed and vc.closed and not vc.shut


_CLOSE = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
_BIG_POST = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2000000\r\n\r\n"
#: A Connection: close request that fills one 4 KiB block (HTTP_BLOCK_SIZE) exactly.
_CLOSE_4K = _CLOSE[:-2] + b"X-Pad: " + b"p" * (4096 - len(_CLOSE) - 9) + b"\r\n\r\n"
MAX_BODY = 1 << 20  # ats_cffi.apps.http.MAX_BODY (checked in the test)


@pytest.mark.parametrize(
    ("request_bytes", "pending", "draining", "lingers"),
    [
        (_CLOSE, False, False, False),
        (b"GET / HTTP/1.0\r\n\r\n", False, False, False),
        (_CLOSE, True, False, True),  # bytes still in the socket: a close would reset
        (_CLOSE + b"GET / HTTP/1.1\r\n", False, False, True),  # it sent more in the same read
        (_CLOSE + b"x", False, False, True),  # junk after it
        (_CLOSE_4K + b"GET", False, False, True),  # more in the next block, not parsed
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", False, True, True),  # the server closes
        (b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", False, False, True),
        (b"GET / HTTP/1.1\r\nConnection: Upgrade, close\r\nUpgrade: x\r\n\r\n", False, False, True),
        (_BIG_POST + b"x" * (MAX_BODY + 1), False, False, True),  # 413 mid-request
    ],
    ids=[
        "connection-close",
        "http10",
        "bytes-in-socket",
        "pipelined-after",
        "junk-after",
        "next-block",
        "draining",
        "uri-too-long",
        "upgrade",
        "body-too-large",
    ],
)
def test_when_a_closing_session_lingers(
    request_bytes: bytes, pending: bool, draining: bool, lingers: bool
) -> None:
    # A session lingers (shut the write side, read on, close at EOS or after LINGER) unless
    # the client asked for the close itself and no byte of it is left unread.
    from ats_cffi.apps import http as app
    from ats_cffi.eventsystem import EventCode

    assert app.MAX_BODY == MAX_BODY and len(_CLOSE_4K) == app.HTTP_BLOCK_SIZE
    service = app.HttpService()
    service.draining = draining
    vc = _FakeVC()
    vc.pending = pending
    session = app.HttpSession(service, vc)  # type: ignore[arg-type]
    session.rbuf.write(request_bytes)
    session.handle_event(EventCode.VC_EVENT_READ_READY, vc.rvio)
    assert session.closing and b"Connection: close\r\n" in vc.send(vc.wvio.ntodo())
    session.handle_event(EventCode.VC_EVENT_WRITE_COMPLETE, vc.wvio)
    assert (session.lingering and vc.shut and not vc.closed) is lingers
    assert (session.closed and vc.closed and not vc.shut) is not lingers


@pytest.mark.parametrize(
    ("idle", "no_activity", "active", "while_in_request"),
    [
        (120.0, 30.0, 900.0, (30.0, 900.0)),  # the defaults (ATS's)
        (10.0, 30.0, 900.0, (10.0, 900.0)),  # a shorter idle timeout stays
        (0.0, 30.0, 900.0, (30.0, 900.0)),  # no idle timeout: a request still has one
        (120.0, 0.0, 0.0, (120.0, 0.0)),  # transaction timeouts off
    ],
)
def test_a_request_that_spans_reads_runs_under_the_transaction_timeouts(
    idle: float, no_activity: float, active: float, while_in_request: tuple[float, float]
) -> None:
    from ats_cffi.apps import http as app
    from ats_cffi.eventsystem import EventCode

    service = app.HttpService(
        inactivity_timeout=idle,
        transaction_no_activity_timeout=no_activity,
        transaction_active_timeout=active,
    )
    vc = _FakeVC()
    session = app.HttpSession(service, vc)  # type: ignore[arg-type]
    assert (vc.inactivity_timeout_in, vc.active_timeout_in) == (idle, 0.0)
    rr = EventCode.VC_EVENT_READ_READY

    # Whole requests (one, or several in one read) never touch the timeouts.
    calls = vc.timeout_calls
    for data in (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n" * 3):
        session.rbuf.write(data)
        session.handle_event(rr, vc.rvio)
    assert vc.timeout_calls == calls and not session.in_transaction_timeouts

    # A request that comes in pieces: the transaction timeouts until its last byte.
    for piece in (b"GET / HT", b"TP/1.1\r\nHo", b"st: a\r\n"):
        session.rbuf.write(piece)
        session.handle_event(rr, vc.rvio)
        assert (vc.inactivity_timeout_in, vc.active_timeout_in) == while_in_request
    # Its end, and the start of the next one in the same read: again for the next.
    session.rbuf.write(b"\r\nGET /")
    session.handle_event(rr, vc.rvio)
    assert (vc.inactivity_timeout_in, vc.active_timeout_in) == while_in_request
    session.rbuf.write(b" HTTP/1.1\r\n\r\n")
    session.handle_event(rr, vc.rvio)
    # Complete: idle again, between requests.
    assert (vc.inactivity_timeout_in, vc.active_timeout_in) == (idle, 0.0)
    assert not session.in_transaction_timeouts
    assert service.stats.get(app.REQUESTS) == 6 == vc.send(vc.wvio.ntodo()).count(HELLO)


def test_a_closing_session_keeps_its_linger_timeout() -> None:
    # A request that spans reads and is refused with a close (413): the linger's active
    # timeout is not cancelled by the transaction's end.
    from ats_cffi.apps import http as app
    from ats_cffi.eventsystem import EventCode

    service = app.HttpService()
    vc = _FakeVC()
    vc.pending = True
    session = app.HttpSession(service, vc)  # type: ignore[arg-type]
    session.rbuf.write(_BIG_POST[:40])
    session.handle_event(EventCode.VC_EVENT_READ_READY, vc.rvio)
    assert vc.active_timeout_in == app.TRANSACTION_ACTIVE_TIMEOUT
    session.rbuf.write(_BIG_POST[40:] + b"x" * (MAX_BODY + 1))
    session.handle_event(EventCode.VC_EVENT_READ_READY, vc.rvio)
    assert session.closing and b" 413 " in vc.send(vc.wvio.ntodo())
    session.handle_event(EventCode.VC_EVENT_WRITE_COMPLETE, vc.wvio)
    assert session.lingering and vc.active_timeout_in == app.LINGER


@pytest.mark.parametrize(
    ("arg", "value", "error"),
    [
        ("transaction_no_activity_timeout", -1, ValueError),
        ("transaction_no_activity_timeout", float("nan"), ValueError),
        ("transaction_active_timeout", float("inf"), ValueError),
        ("transaction_active_timeout", 10**400, ValueError),
        ("transaction_active_timeout", "30", TypeError),
        ("transaction_no_activity_timeout", True, TypeError),
        ("inactivity_timeout", 10**400, ValueError),
    ],
)
def test_the_service_checks_its_timeouts(arg: str, value: object, error: type) -> None:
    from ats_cffi.apps import http as app

    with pytest.raises(error, match=f"HttpService: {arg} must be"):
        app.HttpService(**{arg: value})  # type: ignore[arg-type]
