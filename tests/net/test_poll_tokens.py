"""PollDescriptor's registrations by token (net/poll.py): a token is a slot and a
generation, and an event reaches its EventIO only while the token is the slot's current one,
on a real epoll fd and socket pairs."""

from __future__ import annotations

import errno
import socket

import pytest

from ats_cffi import _fastio
from ats_cffi._native import lib
from ats_cffi.net import EventIO, PollDescriptor
from ats_cffi.net.codes import EVENTIO_DNS_CONNECTION, EVENTIO_READ
from ats_cffi.net.poll import SLOT_MASK


@pytest.fixture
def pd():
    pd = PollDescriptor(8)
    yield pd
    pd.close()


def ready(pd: PollDescriptor) -> list:
    ep = pd.epoll
    n = ep.wait(0)
    return _fastio.ready_events(ep.tokens, ep.masks, n, pd.slots, pd.slot_tokens)


def test_an_event_reaches_the_eventio_registered_with_its_token(pd) -> None:
    a, b = socket.socketpair()
    eio = EventIO(EVENTIO_DNS_CONNECTION)
    try:
        eio.start(pd, a.fileno(), EVENTIO_READ)
        assert pd.lookup(eio.token) is eio and pd.registered() == [eio]
        b.send(b"x")
        evs = ready(pd)
        assert evs[0] is eio and evs[1] & lib.EPOLLIN and len(evs) == 2
    finally:
        eio.stop()
        a.close()
        b.close()
    assert pd.lookup(eio.token) is None and pd.registered() == []


def test_an_event_queued_before_a_stop_reaches_nobody_when_a_new_eventio_took_the_slot(
    pd,
) -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    old, new = EventIO(EVENTIO_DNS_CONNECTION), EventIO(EVENTIO_DNS_CONNECTION)
    try:
        old.start(pd, a.fileno(), EVENTIO_READ)
        b.send(b"x")
        ep = pd.epoll
        n = ep.wait(0)
        assert n == 1 and ep.tokens[0] == old.token
        old.stop()  # the event is already taken from the kernel: stale now
        new.start(pd, c.fileno(), EVENTIO_READ)
        assert new.token & SLOT_MASK == old.token & SLOT_MASK, "the slot is reused"
        assert new.token != old.token, "with the next generation"
        assert _fastio.ready_events(ep.tokens, ep.masks, n, pd.slots, pd.slot_tokens) == []
        assert pd.lookup(old.token) is None and pd.lookup(new.token) is new
        pd.unregister(old.token)  # a stale token frees nothing
        assert pd.lookup(new.token) is new
    finally:
        new.stop()
        for s in (a, b, c, d):
            s.close()


def test_tokens_never_repeat_and_keep_bit_63_for_spliced_ends(pd) -> None:
    eios = [EventIO(EVENTIO_DNS_CONNECTION) for _ in range(3)]
    seen = set()
    for _ in range(4):
        tokens = [pd.register(e) for e in eios]
        seen.update(tokens)
        for t in tokens:
            pd.unregister(t)
    assert len(seen) == 12 and all(t and not t >> 63 for t in seen)
    assert len(pd.slots) == 3, "freed slots are taken again"


@pytest.mark.parametrize(
    "args, exc, words",
    [
        ((b"", b"", 1, [], b""), ValueError, "ready_events: tokens holds 0 bytes, not 8"),
        ((bytes(8), b"", 1, [], b""), ValueError, "ready_events: masks holds 0 bytes, not 4"),
        ((b"", b"", 0, (), b""), TypeError, "ready_events: slots must be a list, not tuple"),
        ((1, b"", 0, [], b""), TypeError, "ready_events: tokens must be a buffer, not int"),
        ((b"", b"", -1, [], b""), ValueError, "ready_events: argument 3 must be >= 0"),
        ((b"", b"", 0, []), TypeError, "ready_events takes 5 arguments"),
    ],
)
def test_ready_events_refuses_bad_arguments_naming_them(args, exc, words) -> None:
    with pytest.raises(exc, match=words):
        _fastio.ready_events(*args)


def test_ready_events_ignores_a_token_past_the_table() -> None:
    tokens = (5 << 32 | 7).to_bytes(8, "little")
    masks = (1).to_bytes(4, "little")
    assert _fastio.ready_events(tokens, masks, 1, [None], bytes(8)) == []


def test_a_pass_waits_through_net_wait_and_a_closed_descriptor_fails_naming_epoll_wait() -> None:
    from ats_cffi.net import PollCont

    pc = PollCont(None, 10)
    pd = pc.poll_descriptor
    a, b = socket.socketpair()
    eio = EventIO(EVENTIO_DNS_CONNECTION)
    try:
        eio.start(pd, a.fileno(), EVENTIO_READ, defer=True)  # issued by the wait itself
        b.send(b"x")
        assert pc.do_poll(1000) == 1 and pd.epoll.tokens[0] == eio.token
        assert not pd.pending
    finally:
        eio.stop()
        a.close()
        b.close()
        pc.close()
    assert pd.epoll.net_args is None
    with pytest.raises(OSError, match="epoll_wait") as info:
        pc.do_poll(0)
    assert info.value.errno == errno.EBADF


def test_each_descriptor_waits_on_its_own_epoll_past_net_waits_kept_arguments() -> None:
    """net_wait keeps the values of the last 8 net_args tuples it parsed: ten descriptors
    waited on in turn, twice over, each see their own socket's event and no other's."""
    from ats_cffi.net import PollCont

    conts, pairs, eios = [], [], []
    try:
        for _ in range(10):
            pc = PollCont(None, 10)
            a, b = socket.socketpair()
            eio = EventIO(EVENTIO_DNS_CONNECTION)
            conts.append(pc)
            pairs.append((a, b))
            eios.append(eio)
            eio.start(pc.poll_descriptor, a.fileno(), EVENTIO_READ)
        for _ in range(2):
            for i, pc in enumerate(conts):
                pairs[i][1].send(b"x")
                assert pc.do_poll(1000) == 1
                assert pc.poll_descriptor.epoll.tokens[0] == eios[i].token
                assert pairs[i][0].recv(8) == b"x"
                assert all(c.do_poll(0) == 0 for c in conts)  # one edge, seen once
    finally:
        for eio in eios:
            eio.stop()
        for a, b in pairs:
            a.close()
            b.close()
        for pc in conts:
            pc.close()


@pytest.mark.parametrize(
    "args, exc, words",
    [
        (([1] * 9, 0), TypeError, "net_wait: net_args must be a tuple of 9 ints"),
        (((1,) * 8, 0), TypeError, "net_wait: net_args must be a tuple of 9 ints"),
        (((0,) + (1,) * 8, 0), ValueError, r"net_wait: net_args\[0\] must be an address"),
        (((1, -1) + (1,) * 7, 0), ValueError, r"net_wait: net_args\[1\] must be an int in"),
        (((1,) * 9, -2), ValueError, "net_wait: timeout_ms must be -1 or 0.."),
        (((1,) * 9, 0.5), TypeError, "net_wait: timeout_ms must be an int, not float"),
        (((1,) * 9,), TypeError, "net_wait takes 2 arguments"),
    ],
)
def test_net_wait_refuses_bad_arguments_before_any_call(args, exc, words) -> None:
    with pytest.raises(exc, match=words):
        _fastio.net_wait(*args)


def test_a_signal_during_the_wait_runs_its_handler_before_the_wait_goes_on() -> None:
    """The handler makes a registered socket readable: the wait that goes on after the
    interruption sees it only if the handler ran inside the call (net_wait), not after."""
    import signal

    from ats_cffi.net import PollCont

    pc = PollCont(None, 10)
    a, b = socket.socketpair()
    eio = EventIO(EVENTIO_DNS_CONNECTION)
    eio.start(pc.poll_descriptor, a.fileno(), EVENTIO_READ)

    class Alarm(Exception):
        pass

    def on_alarm(signum, frame):
        b.send(b"x")

    def raise_alarm(signum, frame):
        raise Alarm

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert pc.do_poll(3000) == 1  # woken by the handler's byte, not the timeout
        signal.signal(signal.SIGALRM, raise_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Alarm):
            pc.do_poll(3000)  # what a handler raises ends the wait
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        eio.stop()
        a.close()
        b.close()
        pc.close()
