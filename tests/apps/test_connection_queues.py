"""ATS's connection queues in ``ats-cffi http`` (net/queues.py): over
``max_connections_in``, the idle keep-alive connections close oldest first; over
``max_requests_in``, a new request's connection closes while the others are served. Both
limits are per net thread (one here), counted in the net stats."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import wait_until

from .conftest import get_json

REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def start(cli, tmp_path: Path, records: str):
    path = tmp_path / "records.toml"
    path.write_text("[proxy.config.net]\n" + records)
    return cli(
        "http", "--listen", "127.0.0.1:0", "--stats", "127.0.0.1:0",
        "--net-threads", "1", "--config", str(path),
    ).wait_listening(2)  # fmt: skip


def one_request(s: socket.socket) -> None:
    """One keep-alive request answered on ``s``."""
    s.sendall(REQUEST)
    got = b""
    while not got.endswith(b"Hello, World!"):
        data = s.recv(4096)
        assert data, "closed instead of answering"
        got += data


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.settimeout(5)


def test_over_max_connections_in_the_oldest_idle_keep_alive_connections_close_first(
    cli, tmp_path
) -> None:
    srv = start(cli, tmp_path, "max_connections_in = 3\n")
    port, stats_port = srv.ports["http"], srv.ports["stats"]
    conns = []
    try:
        for _ in range(3):  # idle in this order: 0 (oldest), 1, 2
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            one_request(s)
            conns.append(s)
        one_request(conns[0])  # 0 is the newest idle now: 1, 2, 0
        assert not any(closed_by_server(s) for s in conns)
        order: list[int] = []
        for _ in range(2):  # each new idle one pushes the oldest out: 1, then 2
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            one_request(s)
            conns.append(s)

            def newly_closed() -> list[int]:
                return [i for i, c in enumerate(conns) if i not in order and closed_by_server(c)]

            assert wait_until(newly_closed, what="a keep-alive connection closed")
            order.extend(newly_closed())
        assert order == [1, 2]
        one_request(conns[0])  # the ones kept still serve
        one_request(conns[4])
        # (The stats request is an HTTP session of the same thread too: read last.)
        stats = get_json(stats_port)["global"]
        assert stats["proxy.process.net.keep_alive_queue_timeout_count"] == 2
    finally:
        for s in conns:
            s.close()


def test_over_max_requests_in_a_new_requests_connection_closes(cli, tmp_path) -> None:
    srv = start(cli, tmp_path, "max_requests_in = 1\n")
    port, stats_port = srv.ports["http"], srv.ports["stats"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as busy:
        busy.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # a request in progress: active
        with socket.create_connection(("127.0.0.1", port), timeout=5) as late:
            late.sendall(REQUEST)
            assert closed_by_server(late) or wait_until(lambda: closed_by_server(late))
        busy.sendall(b"\r\n")
        got = b""
        while not got.endswith(b"Hello, World!"):
            data = busy.recv(4096)
            assert data
            got += data
        one_request(busy)  # its next request: the only one, served
    stats = get_json(stats_port)["global"]
    assert stats["proxy.process.net.max.requests_throttled_in"] == 1
