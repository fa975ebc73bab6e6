"""ATS's per-thread connection queues (NetHandler, ATS 7+): the keep-alive queue and the
active queue, which bound the inbound connections a net thread keeps and the requests it
serves at once; and the open list of every VC the thread started (``OpenList``), which
the InactivityCop visits.

A session (HTTP, say) puts its VC in the *active* queue when a request begins
(``add_to_active_queue``) and in the *keep-alive* queue when it waits idle for the next one
(``add_to_keep_alive_queue``); a VC is in one of them at most, and in neither once closed.

- ``proxy.config.net.max_connections_in`` (per thread: divided by the net threads): when
  the two queues together hold more, the oldest idle keep-alive connections are closed
  first (``manage_keep_alive_queue``: their sessions get ``VC_EVENT_INACTIVITY_TIMEOUT``),
  when a VC goes idle and on every InactivityCop run. Counted in
  ``keep_alive_queue_timeout_count`` and their idle seconds in ``..._seconds`` (ATS:
  ``keep_alive_queue_timeout_total``; a Prometheus counter name may not end in _total).
- ``proxy.config.net.max_requests_in`` (per thread; 0: no limit): a request that would
  take the active queue past it first closes active connections whose timeouts have
  already passed (``manage_active_queue``); if none, ``add_to_active_queue`` says False
  and the session closes the connection instead of serving it, counted in
  ``max.requests_throttled_in``.

Only the VC's net thread touches its queues (the session runs there).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from ats_cffi.eventsystem.codes import VC_EVENT_ACTIVE_TIMEOUT, VC_EVENT_INACTIVITY_TIMEOUT
from ats_cffi.net import stats as st

#: How far before now a deadline is set to make it due (the VC signals one that is < now).
_DUE: Final = 1e-6

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler
    from ats_cffi.net.netvc import UnixNetVConnection
    from ats_cffi.net.netvconnection import NetVConnection


#: ``vc.queue``: in neither queue, in the keep-alive queue, in the active queue.
NO_QUEUE: Final = 0
KEEP_ALIVE: Final = 1
ACTIVE: Final = 2


class VCQueue:
    """One queue of VCs, oldest first: a doubly-linked list through the VCs' own
    ``queue_prev``/``queue_next`` (ATS's intrusive ``Queue<UnixNetVConnection>``), so that a
    VC moves between queues with a few field writes, no hashing and no allocation. ``kind``
    is what the VCs in it have in ``queue``; this module alone writes those three fields."""

    __slots__ = ("kind", "head", "tail", "count")

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.head: NetVConnection | None = None
        self.tail: NetVConnection | None = None
        self.count = 0

    def push(self, vc: NetVConnection) -> None:
        """``vc`` (in no queue) becomes the newest."""
        tail = self.tail
        vc.queue = self.kind
        vc.queue_prev = tail
        vc.queue_next = None
        if tail is None:
            self.head = vc
        else:
            tail.queue_next = vc
        self.tail = vc
        self.count += 1

    def unlink(self, vc: NetVConnection) -> None:
        """Take ``vc`` (in this queue) out."""
        prev = vc.queue_prev
        nxt = vc.queue_next
        if prev is None:
            self.head = nxt
        else:
            prev.queue_next = nxt
        if nxt is None:
            self.tail = prev
        else:
            nxt.queue_prev = prev
        vc.queue = NO_QUEUE
        vc.queue_prev = None
        vc.queue_next = None
        self.count -= 1

    def vcs(self) -> list[NetVConnection]:
        """The VCs, oldest first."""
        out = []
        vc = self.head
        while vc is not None:
            out.append(vc)
            vc = vc.queue_next
        return out


class ConnectionQueues:
    """One NetHandler's keep-alive queue (oldest idle first) and active queue."""

    def __init__(self, nh: NetHandler) -> None:
        self.nh = nh
        #: Net threads the ``*_in`` limits are shared by (set when the processor starts).
        self.threads = 1
        #: Idle keep-alive VCs, oldest first.
        self.keep_alive = VCQueue(KEEP_ALIVE)
        #: VCs with a request in progress, oldest first.
        self.active = VCQueue(ACTIVE)

    def _per_thread(self, total: int) -> int:
        """This thread's share of ``total`` (rounded up; 0: no limit)."""
        if total <= 0:
            return 0
        threads = self.threads
        return total if threads == 1 else -(-total // threads)

    # ------------------------------------------------------------------ the VC's moves

    def add_keep_alive(self, vc: NetVConnection) -> None:
        """``vc`` waits idle for its next request: the newest of the keep-alive queue. Then
        the oldest ones close while the thread holds too many connections."""
        self.remove(vc)
        self.keep_alive.push(vc)
        self.manage_keep_alive_queue()

    def add_active(self, vc: NetVConnection) -> bool:
        """A request begins on ``vc``: False (and ``vc`` in no queue) when the thread serves
        ``max_requests_in`` requests already and none of them has timed out."""
        q = vc.queue
        if q == ACTIVE:
            self.active.unlink(vc)  # active already: the newest again
            self.active.push(vc)
            return True
        if q == KEEP_ALIVE:
            self.keep_alive.unlink(vc)
        if not self.manage_active_queue():
            self.nh.stats[st.REQUESTS_THROTTLED_IN] += 1
            return False
        self.active.push(vc)
        return True

    def remove(self, vc: NetVConnection) -> None:
        """``vc`` leaves its queue, if any (closed, or no longer a session's)."""
        q = vc.queue
        if q == KEEP_ALIVE:
            self.keep_alive.unlink(vc)
        elif q == ACTIVE:
            self.active.unlink(vc)

    # ------------------------------------------------------------------ the limits

    def manage_keep_alive_queue(self) -> None:
        """Close the oldest keep-alive connections while both queues together hold more
        than the thread's share of ``max_connections_in``."""
        limit = self._per_thread(self.nh.config.max_connections_in)
        if not limit:
            return
        ka = self.keep_alive
        while ka.head is not None and ka.count + self.active.count > limit:
            vc = ka.head
            ka.unlink(vc)
            self._close(vc, keep_alive=True)

    def manage_active_queue(self) -> bool:
        """Whether one more request fits under the thread's share of ``max_requests_in``,
        after closing active connections whose timeouts have passed."""
        limit = self._per_thread(self.nh.config.max_requests_in)
        active = self.active
        if not limit or active.count < limit:
            return True
        now = self.nh.now
        for vc in active.vcs():  # a snapshot: closing one may unlink others
            if vc.queue != ACTIVE:
                continue
            inactive = vc.next_inactivity_timeout_at and vc.next_inactivity_timeout_at <= now
            expired = vc.next_activity_timeout_at and vc.next_activity_timeout_at <= now
            if inactive or expired:
                active.unlink(vc)
                self._close(vc, keep_alive=False)
                if active.count < limit:
                    return True
        return active.count < limit

    def _close(self, vc: NetVConnection, keep_alive: bool) -> None:
        """Make ``vc``'s session close it: a keep-alive VC's inactivity timeout is due now,
        and the VC signals it as the InactivityCop would (an active one's own timeout has
        passed already). A VC whose mutex another thread holds keeps its deadline, and the
        cop delivers it on its next run, as ATS leaves such a VC."""
        if vc.closed:
            return
        nh = self.nh
        now = nh.now
        if keep_alive:
            stats = nh.stats
            stats[st.KEEP_ALIVE_QUEUE_TIMEOUT_COUNT] += 1
            if vc.inactivity_timeout_in and vc.next_inactivity_timeout_at:
                idle = now - (vc.next_inactivity_timeout_at - vc.inactivity_timeout_in)
                stats[st.KEEP_ALIVE_QUEUE_TIMEOUT_SECONDS] += max(0, int(idle))
            vc.next_inactivity_timeout_at = now - _DUE
            vc.handle_event(VC_EVENT_INACTIVITY_TIMEOUT, None)
        elif vc.next_activity_timeout_at and vc.next_activity_timeout_at <= now:
            vc.next_activity_timeout_at = min(vc.next_activity_timeout_at, now - _DUE)
            vc.handle_event(VC_EVENT_ACTIVE_TIMEOUT, None)
        else:
            vc.next_inactivity_timeout_at = min(vc.next_inactivity_timeout_at, now - _DUE)
            vc.handle_event(VC_EVENT_INACTIVITY_TIMEOUT, None)


class OpenList:
    """A NetHandler's open VCs (ATS's ``open_list``): every VC its thread started and has
    not freed, which the InactivityCop visits and the thread's shutdown frees.

    A list with each VC's place in it kept in the VC (``open_index``, -1 when in none): an
    add appends, a removal moves the last VC into the place left, and the cop takes a
    snapshot with one copy. That is about 17 bytes a VC, where a set took 52 to 105 at
    10,000 (a hash table is kept at most 60% full and grows fourfold), which was 8% of an
    idle connection's memory. The order is not kept. This class alone writes
    ``open_index``."""

    __slots__ = ("_vcs",)

    def __init__(self) -> None:
        self._vcs: list[UnixNetVConnection] = []

    def __len__(self) -> int:
        return len(self._vcs)

    def __iter__(self) -> Iterator[UnixNetVConnection]:
        """The open VCs, while none is added or removed (``vcs()`` otherwise)."""
        return iter(self._vcs)

    def add(self, vc: UnixNetVConnection) -> None:
        """``vc`` is open on this thread (nothing if it is already)."""
        if vc.open_index < 0:
            vcs = self._vcs
            vc.open_index = len(vcs)
            vcs.append(vc)

    def remove(self, vc: UnixNetVConnection) -> None:
        """``vc`` is no longer open here (nothing if it was not)."""
        i = vc.open_index
        if i < 0:
            return
        vc.open_index = -1
        vcs = self._vcs
        last = vcs.pop()
        if last is not vc:
            vcs[i] = last
            last.open_index = i

    def vcs(self) -> list[UnixNetVConnection]:
        """The open VCs (a snapshot: freeing one removes it from the list, not from this)."""
        return self._vcs[:]


__all__ = ["ConnectionQueues", "OpenList", "VCQueue"]
