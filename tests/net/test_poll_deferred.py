"""PollDescriptor's queued registrations (net/poll.py): an ``add`` with ``defer`` reaches the
kernel at the next ``flush`` (the poll step's, before its wait), and a ``modify``, ``delete``
or ``drop`` before then edits or forgets it; on a real epoll fd and socket pairs."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from ats_cffi._native import lib
from ats_cffi.net import EventIO, PollDescriptor
from ats_cffi.net.codes import EVENTIO_DNS_CONNECTION, EVENTIO_READ

ET_RW = lib.EPOLLIN | lib.EPOLLOUT | lib.EPOLLET


@pytest.fixture
def pd():
    pd = PollDescriptor(8)
    yield pd
    pd.close()


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def events_of(pd: PollDescriptor, timeout_ms: int = 0) -> dict[int, int]:
    """The queued ADDs issued, then one wait's events by token."""
    pd.flush()
    ep = pd.epoll
    n = ep.wait(timeout_ms)
    return {ep.tokens[i]: ep.masks[i] for i in range(n)}


def test_a_deferred_add_is_issued_by_the_next_flush_and_reports_what_arrived_before(
    pd, pair
) -> None:
    a, b = pair
    pd.add(a.fileno(), ET_RW, 11, True)
    assert pd.epoll.wait(0) == 0  # not in the kernel yet
    b.send(b"early")  # before the registration reaches the kernel
    got = events_of(pd, 1000)
    assert got.keys() == {11} and not pd.pending
    assert got[11] & lib.EPOLLIN and got[11] & lib.EPOLLOUT
    assert events_of(pd) == {}  # edge-triggered from then on
    b.send(b"later")
    assert events_of(pd, 1000).keys() == {11}


def test_delete_or_drop_of_a_deferred_add_makes_no_registration(pd, pair) -> None:
    a, b = pair
    pd.add(a.fileno(), ET_RW, 1, True)
    pd.delete(a.fileno())
    pd.add(b.fileno(), ET_RW, 2, True)
    pd.drop(b.fileno())
    a.send(b"x")
    b.send(b"y")
    assert events_of(pd, 20) == {}
    assert pd.failed == []
    # Nothing reached the kernel: a plain ADD of the same fds is no EEXIST.
    pd.add(a.fileno(), ET_RW, 3, False)
    pd.add(b.fileno(), ET_RW, 4, False)
    assert events_of(pd, 1000).keys() == {3, 4}
    pd.delete(a.fileno())  # now a real EPOLL_CTL_DEL
    b.send(b"z")
    a.send(b"z")
    assert events_of(pd, 1000).keys() == {4}


def test_modify_of_a_deferred_add_changes_what_is_registered(pd, pair) -> None:
    a, b = pair
    pd.add(a.fileno(), lib.EPOLLOUT | lib.EPOLLET, 5, True)
    pd.modify(a.fileno(), lib.EPOLLIN | lib.EPOLLET, (1 << 63) | 6)
    assert events_of(pd) == {}  # EPOLLOUT is no longer asked for
    b.send(b"x")
    assert events_of(pd, 1000) == {(1 << 63) | 6: lib.EPOLLIN}


def test_a_deferred_add_that_fails_is_recorded_and_reaches_its_eventio(pd, pair) -> None:
    a, _ = pair
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    eio = EventIO(EVENTIO_DNS_CONNECTION)
    eio.start(pd, r, EVENTIO_READ, defer=True)  # closed by the time it is issued
    pd.add(a.fileno(), ET_RW, 8, True)
    assert events_of(pd, 1000).keys() == {8}
    assert pd.failed == [(r, eio.token, errno.EBADF)]
    assert pd.take_failed() == [(eio, errno.EBADF)] and pd.failed == []
    eio.stop(closing=True)


def test_a_second_add_of_a_queued_fd_and_an_add_to_a_closed_descriptor_fail(pd, pair) -> None:
    a, _ = pair
    pd.add(a.fileno(), ET_RW, 1, True)
    for defer in (True, False):
        with pytest.raises(OSError, match="epoll_ctl") as ei:
            pd.add(a.fileno(), ET_RW, 2, defer)
        assert ei.value.errno == errno.EEXIST
    closed = PollDescriptor(1)
    closed.close()
    for defer in (True, False):
        with pytest.raises(OSError, match="epoll_ctl") as ei:
            closed.add(a.fileno(), ET_RW, 1, defer)
        assert ei.value.errno == errno.EBADF
