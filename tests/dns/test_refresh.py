"""The EVENTIO_DNS_CONNECTION path: trigger, then refresh (DESIGN.md section 5)."""

from __future__ import annotations

from ats_cffi.dns import dns_processor
from ats_cffi.net.codes import EVENTIO_DNS_CONNECTION
from tests.net.conftest import wait_until

from .conftest import Recorder, settle_net

RECORDS = {"a.test": {"A": ["10.0.0.1"]}, "b.test": {"A": ["10.0.0.2"]}}


def test_dns_connections_are_registered_as_eventio_dns_connection(dns_server, start_dns) -> None:
    start_dns(dns_server(RECORDS), dns_server(RECORDS), n_threads=2)
    for h in dns_processor.handlers.values():
        assert len(h.udpcon) == 2
        for conn in h.udpcon:
            assert conn is not None and conn.eio.type is EVENTIO_DNS_CONNECTION
            assert conn.eio.pd is h.pd and conn.eio.data is conn


def test_two_answers_arriving_before_the_handler_drains_are_both_delivered(
    dns_server, start_dns
) -> None:
    server = dns_server(RECORDS, mode="hold")
    start_dns(server)
    (h,) = dns_processor.handlers.values()
    conn = h.udpcon[0]
    ra, rb = Recorder(), Recorder()
    dns_processor.gethostbyname(ra, "a.test")
    dns_processor.gethostbyname(rb, "b.test")
    assert server.wait_queries(2)
    with h.mutex:  # the handler cannot drain while this thread holds its mutex
        before = conn.triggers
        assert server.release() == 2
        # Each arrival makes one edge at most (two triggers). More triggers than that can
        # only come from the refresh after each trigger re-reporting the answers that are
        # still queued in the socket.
        assert wait_until(lambda: conn.triggers >= before + 4)
        assert ra.events == [] and rb.events == []
        assert list(h.triggered) == [conn] and conn.in_triggered  # queued once
    # Released: the next re-report lets the handler drain both answers.
    assert ra.result().addrs == ("10.0.0.1",)
    assert rb.result().addrs == ("10.0.0.2",)
    assert server.total_queries == 2  # delivered from the socket, not by retrying
    assert not h.triggered and not conn.in_triggered


def test_a_drained_connection_is_not_reported_again(dns_server, start_dns) -> None:
    server = dns_server(RECORDS)
    start_dns(server)
    (h,) = dns_processor.handlers.values()
    conn = h.udpcon[0]
    rec = Recorder()
    dns_processor.gethostbyname(rec, "a.test")
    rec.result()
    settled = conn.triggers
    for _ in range(5):  # ten passes and more of the handler's thread
        settle_net()
    # Once drained to EAGAIN, the refresh finds nothing pending: no more triggers.
    assert conn.triggers <= settled + 1
