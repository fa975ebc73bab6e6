"""Graceful stop on SIGTERM/SIGINT, and ``--workers`` processes sharing one port."""

from __future__ import annotations

import http.client
import os
import signal
import time

from tests.conftest import wait_until

from .conftest import (
    alive,
    connect,
    descendants,
    get_json,
    parse_summary,
    port_refuses,
    recv_exactly,
)


def test_sigterm_with_open_connections_exits_0_after_the_drain_timeout(cli) -> None:
    srv = cli("echo", "--listen", "127.0.0.1:0", "--drain-timeout", "1.5").wait_listening()
    clients = [connect(srv.port) for _ in range(3)]
    try:
        for s in clients:
            s.sendall(b"hi")
            assert recv_exactly(s, 2) == b"hi"
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert srv.wait(10) == 0
        elapsed = time.monotonic() - t0
        assert 1.2 <= elapsed <= 5.0
        (line,) = srv.rest_of_output()
        summary = parse_summary(line)
        assert summary["total_accepts"] == "3"
        assert summary["connections_currently_open"] == "3"  # still open when it gave up
        assert summary["drain"] == "timeout"
        assert port_refuses(srv.port)
        for s in clients:  # the stop closed them
            try:
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in clients:
            s.close()


def test_the_drain_serves_open_connections_and_ends_when_they_close(cli) -> None:
    srv = cli("echo", "--listen", "127.0.0.1:0", "--drain-timeout", "30").wait_listening()
    with connect(srv.port) as s:
        s.sendall(b"before")
        assert recv_exactly(s, 6) == b"before"
        srv.signal(signal.SIGINT)
        # New connections are refused at once; the open one is still served.
        wait_until(lambda: port_refuses(srv.port), what="the listener closed", interval=0.02)
        s.sendall(b"during the drain")
        assert recv_exactly(s, 16) == b"during the drain"
        assert srv.proc.poll() is None
        t0 = time.monotonic()
    assert srv.wait(10) == 0
    assert time.monotonic() - t0 < 5  # it did not wait for the 30 s drain timeout
    (line,) = srv.rest_of_output()
    summary = parse_summary(line)
    assert summary["drain"] == "complete" and summary["connections_currently_open"] == "0"


def test_http_drain_closes_idle_keep_alive_connections_promptly(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0", "--drain-timeout", "30").wait_listening()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"Hello, World!"
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert srv.wait(10) == 0
        assert time.monotonic() - t0 < 5
    finally:
        conn.close()
    summary = parse_summary(srv.rest_of_output()[0])
    assert summary["drain"] == "complete" and summary["incoming_requests"] == "1"


def test_two_workers_both_accept_and_stop_together(cli) -> None:
    srv = cli("http", "--listen", "127.0.0.1:0", "--workers", "2").wait_listening()
    workers = descendants(srv.pid)
    assert len(workers) == 2
    seen: dict[int, int] = {}
    for _ in range(40):  # new connections spread over the workers by SO_REUSEPORT
        doc = get_json(srv.port)
        seen[doc["pid"]] = max(
            seen.get(doc["pid"], 0), doc["global"]["proxy.process.tcp.total_accepts"]
        )
    assert set(seen) == workers
    assert all(n >= 1 for n in seen.values())
    srv.signal(signal.SIGTERM)
    assert srv.wait(15) == 0
    (line,) = srv.rest_of_output()  # the listening line came once, the summary once
    summary = parse_summary(line)
    assert summary["workers"] == "2"
    per_worker = [int(n) for n in summary["accepts_per_worker"].split(",")]
    assert len(per_worker) == 2 and all(n >= 1 for n in per_worker)
    assert sum(per_worker) == int(summary["total_accepts"]) == 40
    assert not any(alive(p) for p in workers)
    assert port_refuses(srv.port)


def test_workers_with_a_stats_listener_share_both_ports(cli) -> None:
    srv = cli(
        "echo", "--listen", "127.0.0.1:0", "--stats", "127.0.0.1:0", "--workers", "2"
    ).wait_listening(2)
    assert set(srv.ports) == {"echo", "stats"}
    with connect(srv.ports["echo"]) as s:
        s.sendall(b"ping")
        assert recv_exactly(s, 4) == b"ping"
    assert get_json(srv.ports["stats"])["worker"] in (0, 1)
    srv.signal(signal.SIGINT)
    assert srv.wait(15) == 0
    assert parse_summary(srv.rest_of_output()[0])["workers"] == "2"


def test_a_worker_that_dies_stops_the_others(cli) -> None:
    srv = cli("echo", "--listen", "127.0.0.1:0", "--workers", "2").wait_listening()
    w1, w2 = sorted(descendants(srv.pid))
    os.kill(w1, signal.SIGKILL)
    assert srv.wait(15) == 1
    assert not alive(w2)


def test_workers_whose_parent_is_killed_stop_without_a_traceback(cli) -> None:
    # Their last report goes to the dead parent's pipe: that used to end each worker with a
    # BrokenPipeError traceback ("worker N failed").
    srv = cli("echo", "--listen", "127.0.0.1:0", "--workers", "2", "--drain-timeout", "1")
    srv.wait_listening()
    workers = descendants(srv.pid)
    assert len(workers) == 2
    os.kill(srv.pid, signal.SIGKILL)
    srv.wait(10)
    wait_until(lambda: not any(alive(w) for w in workers), 15, "the workers to stop", interval=0.05)
    err = srv.stderr()
    assert "the parent process is gone" in err
    assert "Traceback" not in err and "failed" not in err, err
