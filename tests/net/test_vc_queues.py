"""The NetHandler's keep-alive and active queues (net/queues.py) as lists through the VCs:
order (oldest first), moves between them, removal from anywhere, and the limits closing
the oldest idle VC. VCs that never had a socket: no event loop is needed here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ats_cffi.eventsystem.current import REGULAR
from ats_cffi.eventsystem.ethread import EThread
from ats_cffi.net import stats as st
from ats_cffi.net.config import NetConfig
from ats_cffi.net.nethandler import NetHandler
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.queues import (
    ACTIVE,
    KEEP_ALIVE,
    NO_QUEUE,
    ConnectionQueues,
    OpenList,
    VCQueue,
)


@pytest.fixture
def nh() -> Iterator[NetHandler]:
    """A NetHandler of its own config, on an EThread that never runs."""
    thread = EThread(REGULAR, name="[queues test]")
    handler = NetHandler(thread, NetConfig())
    handler.now = 100.0
    try:
        yield handler
    finally:
        handler.close()
        thread.join()  # releases its eventfd


def vcs(n: int) -> list[UnixNetVConnection]:
    return [UnixNetVConnection(None) for _ in range(n)]


def test_a_queue_keeps_its_vcs_oldest_first_and_unlinks_any_of_them() -> None:
    q = VCQueue(KEEP_ALIVE)
    a, b, c, d = vcs(4)
    for vc in (a, b, c, d):
        q.push(vc)
    assert q.vcs() == [a, b, c, d] and q.count == 4 and q.head is a and q.tail is d
    assert all(vc.queue == KEEP_ALIVE for vc in (a, b, c, d))
    q.unlink(b)  # the middle
    q.unlink(a)  # the head
    q.unlink(d)  # the tail
    assert q.vcs() == [c] and q.count == 1 and q.head is c and q.tail is c
    assert (b.queue, b.queue_prev, b.queue_next) == (NO_QUEUE, None, None)
    q.unlink(c)
    assert q.vcs() == [] and q.count == 0 and q.head is None and q.tail is None
    q.push(b)
    assert q.vcs() == [b] and b.queue_prev is None and b.queue_next is None


def test_a_vc_moves_between_the_queues_and_is_in_one_at_most(nh: NetHandler) -> None:
    queues = ConnectionQueues(nh)
    a, b, c = vcs(3)
    for vc in (a, b, c):
        assert queues.add_active(vc)
    queues.add_keep_alive(b)
    assert queues.active.vcs() == [a, c] and queues.keep_alive.vcs() == [b]
    assert b.queue == KEEP_ALIVE and a.queue == ACTIVE
    assert queues.add_active(a)  # active already: the newest again
    assert queues.active.vcs() == [c, a]
    assert queues.add_active(b)  # its next request
    assert queues.keep_alive.vcs() == [] and queues.active.vcs() == [c, a, b]
    queues.remove(a)
    queues.remove(a)  # in no queue: nothing
    assert queues.active.vcs() == [c, b] and queues.active.count == 2
    assert a.queue == NO_QUEUE


def test_over_max_connections_in_the_oldest_idle_vc_is_timed_out(nh: NetHandler) -> None:
    nh.config.set("proxy.config.net.max_connections_in", 3)
    queues = ConnectionQueues(nh)
    a, b, c, d = vcs(4)
    queues.add_active(d)
    for vc in (a, b, c):
        queues.add_keep_alive(vc)
    # 3 idle + 1 active > 3: the oldest idle one leaves, its inactivity timeout made due
    assert queues.keep_alive.vcs() == [b, c] and a.queue == NO_QUEUE
    assert a.next_inactivity_timeout_at < nh.now
    assert b.next_inactivity_timeout_at == 0.0 and c.next_inactivity_timeout_at == 0.0
    assert nh.stats[st.KEEP_ALIVE_QUEUE_TIMEOUT_COUNT] == 1


@pytest.mark.parametrize("n", [1, 50])
def test_many_moves_leave_consistent_links(nh: NetHandler, n: int) -> None:
    queues = ConnectionQueues(nh)
    pool = vcs(n)
    for i in range(400):
        vc = pool[(i * 7) % n]
        if i % 3 == 0:
            queues.add_keep_alive(vc)
        elif i % 3 == 1:
            queues.add_active(vc)
        else:
            queues.remove(vc)
    for q, kind in ((queues.keep_alive, KEEP_ALIVE), (queues.active, ACTIVE)):
        listed = q.vcs()
        assert len(listed) == q.count and all(vc.queue == kind for vc in listed)
        back = []
        vc = q.tail
        while vc is not None:
            back.append(vc)
            vc = vc.queue_prev
        assert back == listed[::-1]
    assert {vc.queue for vc in pool} <= {NO_QUEUE, KEEP_ALIVE, ACTIVE}
    assert sum(vc.queue != NO_QUEUE for vc in pool) == queues.keep_alive.count + queues.active.count


def test_the_open_list_adds_once_and_removes_from_anywhere_keeping_each_place() -> None:
    ol = OpenList()
    pool = vcs(6)
    for vc in pool + pool[:2]:  # the second add of a VC does nothing
        ol.add(vc)
    assert len(ol) == 6 and sorted(map(id, ol)) == sorted(map(id, pool))
    snapshot = ol.vcs()
    for vc in (pool[0], pool[5], pool[2], pool[2]):  # the first, the last, one twice
        ol.remove(vc)
    assert snapshot == pool, "a snapshot is not the list"
    left = list(ol)
    assert sorted(map(id, left)) == sorted(map(id, (pool[1], pool[3], pool[4])))
    assert all(left[vc.open_index] is vc for vc in left)
    assert [vc.open_index for vc in (pool[0], pool[2], pool[5])] == [-1, -1, -1]
    for vc in left:
        ol.remove(vc)
    assert len(ol) == 0 and list(ol) == []


def test_a_freed_vc_leaves_the_open_list_and_is_not_due_for_the_cop(nh: NetHandler) -> None:
    a, b = vcs(2)
    for vc in (a, b):
        nh.start_cop(vc)
        vc.in_cop = True
    nh.free_netevent(a)
    assert list(nh.open_list) == [b] and b.open_index == 0
    assert a.open_index == -1 and not a.in_cop
