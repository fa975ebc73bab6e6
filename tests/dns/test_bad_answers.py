"""Answers that are not the answer: dropped, counted, and the right one that follows is used.
Cancelled lookups send no event."""

from __future__ import annotations

import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from ats_cffi.dns import DNSError, dns_processor, dns_stats
from tests.net.conftest import wait_until

from .conftest import Recorder, settle_net

RECORDS = {"www.test": {"A": ["10.1.2.3"]}, "other.test": {"A": ["10.9.9.9"]}}


def stat(name: str) -> int:
    return dns_stats.get(f"proxy.process.dns.{name}")


def wrong_id(q: dns.message.Message, reply: dns.message.Message) -> list[bytes]:
    bad = dns.message.from_wire(reply.to_wire())
    bad.id = (reply.id + 1) & 0xFFFF
    return [bad.to_wire()]


def wrong_question(q: dns.message.Message, reply: dns.message.Message) -> list[bytes]:
    # The right id, but an answer about another name (as an off-path forger might send).
    forged = dns.message.make_query("other.test", dns.rdatatype.A)
    forged.id = q.id
    r = dns.message.make_response(forged)
    r.answer.append(dns.rrset.from_text("other.test.", 60, "IN", "A", "6.6.6.6"))
    return [r.to_wire()]


def garbage(q: dns.message.Message, reply: dns.message.Message) -> list[bytes]:
    return [b"\x00garbage"]  # shorter than a DNS header


def garbage_with_the_right_id(q: dns.message.Message, reply: dns.message.Message) -> list[bytes]:
    return [q.id.to_bytes(2, "big") + b"\xff" * 40]


@pytest.mark.parametrize(
    ("inject", "counter"),
    [
        (wrong_id, "unknown_id_answers"),
        (wrong_question, "wrong_question_answers"),
        (garbage, "malformed_answers"),
        (garbage_with_the_right_id, "malformed_answers"),
    ],
)
def test_a_bad_answer_is_dropped_and_counted_and_the_right_one_is_used(
    dns_server, start_dns, inject, counter
) -> None:
    server = dns_server(RECORDS, inject=inject)
    start_dns(server)
    rec = Recorder()
    dns_processor.gethostbyname(rec, "www.test")
    ent = rec.result()
    assert ent.good and ent.addrs == ("10.1.2.3",)
    assert stat(counter) == 1
    assert stat("bad_answers_dropped") == 1
    assert stat("answers_received") == 2
    assert server.total_queries == 1  # nothing was retried because of it


def test_every_kind_of_bad_answer_before_one_good_answer(dns_server, start_dns) -> None:
    def all_bad(q: dns.message.Message, reply: dns.message.Message) -> list[bytes]:
        out = []
        for f in (wrong_id, wrong_question, garbage, garbage_with_the_right_id):
            out += f(q, reply)
        return out

    server = dns_server(RECORDS, inject=all_bad, mode="hold")
    start_dns(server)
    rec = Recorder()
    dns_processor.gethostbyname(rec, "www.test")
    assert server.wait_queries(1)
    assert server.release() == 5  # all in the socket together, drained in one go
    assert rec.result().addrs == ("10.1.2.3",)
    assert stat("bad_answers_dropped") == 4
    assert stat("unknown_id_answers") == 1 and stat("wrong_question_answers") == 1
    assert stat("malformed_answers") == 2


def test_an_answer_for_a_cancelled_lookup_is_dropped_and_sends_no_event(
    dns_server, start_dns
) -> None:
    server = dns_server(RECORDS, mode="hold")
    start_dns(server, n_threads=2)
    cancelled, kept = Recorder(), Recorder()
    action = dns_processor.gethostbyname(cancelled, "www.test")
    dns_processor.gethostbyname(kept, "other.test")
    assert server.wait_queries(2)
    action.cancel()
    assert action.cancelled
    assert server.release() == 2
    assert kept.result().addrs == ("10.9.9.9",)
    wait_until(lambda: stat("cancelled_answers") == 1, what="the cancelled lookup's answer")
    assert stat("bad_answers_dropped") == 1
    settle_net()  # dropped there: an event for it would have come by now
    assert cancelled.events == []
    assert stat("in_flight") == 0


def test_a_lookup_cancelled_before_it_is_sent_sends_nothing(
    dns_server, start_dns, fake_clock
) -> None:
    server = dns_server(RECORDS)
    start_dns(server, clock=fake_clock)
    rec = Recorder()
    with rec.mutex:  # the answer cannot be delivered while we hold it...
        action = dns_processor.gethostbyname(rec, "www.test")
        action.cancel()  # ...and after this it never will be
    fake_clock.settle()  # the lookup reached its handler: sent, or dropped as cancelled
    if stat("total_dns_lookups"):  # sent before the cancel: its answer comes back
        wait_until(lambda: stat("answers_received") == 1, what="the answer")
    fake_clock.advance(1.0)  # a delivery put off while the mutex was held was retried
    assert rec.events == []
    assert server.total_queries <= 1


def test_a_cancelled_lookup_that_times_out_sends_no_event_and_is_not_retried(
    dns_server, start_dns, fake_clock
) -> None:
    silent = dns_server(RECORDS, mode="silent")
    start_dns(silent, lookup_timeout=0.25, retries=3, clock=fake_clock)
    rec = Recorder()
    action = dns_processor.gethostbyname(rec, "www.test")
    assert silent.wait_queries(1)
    action.cancel()
    fake_clock.tick(1.25, 0.25)  # every timeout the tries would have had, and one more
    assert rec.events == []
    assert silent.total_queries == 1 and stat("retries") == 0
    assert stat("in_flight") == 0


def test_a_waiter_that_did_not_cancel_still_gets_the_shared_answer(dns_server, start_dns) -> None:
    server = dns_server(RECORDS, mode="hold")
    start_dns(server)
    gone, stays = Recorder(), Recorder()
    dns_processor.gethostbyname(gone, "www.test").cancel()
    dns_processor.gethostbyname(stays, "www.test")
    assert server.wait_queries(1)
    server.release()
    assert stays.result().addrs == ("10.1.2.3",)
    assert gone.events == [] and stat("cancelled_answers") == 0


def test_a_late_answer_to_an_earlier_try_is_still_taken(dns_server, start_dns, fake_clock) -> None:
    slow = dns_server(RECORDS, mode="hold")
    silent = dns_server(RECORDS, mode="silent")
    start_dns(slow, silent, lookup_timeout=0.25, retries=3, clock=fake_clock)
    rec = Recorder()
    dns_processor.gethostbyname(rec, "www.test")
    assert slow.wait_queries(1)
    fake_clock.advance(0.25)  # the first try timed out
    assert silent.wait_queries(1)  # the second is on the wire
    slow.release()  # now the first server's answer arrives
    assert rec.result().addrs == ("10.1.2.3",)
    assert stat("bad_answers_dropped") == 0


def test_stop_answers_pending_lookups_with_shutdown(dns_server, start_dns) -> None:
    silent = dns_server(RECORDS, mode="silent")
    start_dns(silent, lookup_timeout=30.0)
    rec = Recorder()
    dns_processor.gethostbyname(rec, "www.test")
    assert silent.wait_queries(1)
    dns_processor.stop()
    assert rec.result().error is DNSError.SHUTDOWN
    assert not dns_processor.started
