"""ATS's per-thread connection queues (NetHandler, ATS 7+): the keep-alive queue and the
active queue, which bound the inbound connections a net thread keeps and the requests it
serves at once.

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

from typing import TYPE_CHECKING, Final

from ats_cffi.eventsystem.codes import VC_EVENT_ACTIVE_TIMEOUT, VC_EVENT_INACTIVITY_TIMEOUT
from ats_cffi.net import stats as st

#: How far before now a deadline is set to make it due (the VC signals one that is < now).
_DUE: Final = 1e-6

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler
    from ats_cffi.net.netvc import UnixNetVConnection


class ConnectionQueues:
    """One NetHandler's keep-alive queue (oldest idle first) and active queue."""

    def __init__(self, nh: NetHandler) -> None:
        self.nh = nh
        #: Net threads the ``*_in`` limits are shared by (set when the processor starts).
        self.threads = 1
        #: Idle keep-alive VCs, oldest first (a dict: ordered, O(1) removal). A VC is
        #: taken out with ``in`` and ``del`` (native operations), not ``pop``: compiled, a
        #: ``dict.pop`` is a method call by name, about three times their cost.
        self.keep_alive: dict[UnixNetVConnection, None] = {}
        #: VCs with a request in progress, oldest first.
        self.active: dict[UnixNetVConnection, None] = {}

    def _per_thread(self, total: int) -> int:
        """This thread's share of ``total`` (rounded up; 0: no limit)."""
        if total <= 0:
            return 0
        threads = self.threads
        return total if threads == 1 else -(-total // threads)

    # ------------------------------------------------------------------ the VC's moves

    def add_keep_alive(self, vc: UnixNetVConnection) -> None:
        """``vc`` waits idle for its next request: the newest of the keep-alive queue. Then
        the oldest ones close while the thread holds too many connections."""
        _take_out(vc, self.active, self.keep_alive)
        self.keep_alive[vc] = None
        self.manage_keep_alive_queue()

    def add_active(self, vc: UnixNetVConnection) -> bool:
        """A request begins on ``vc``: False (and ``vc`` in no queue) when the thread serves
        ``max_requests_in`` requests already and none of them has timed out."""
        if _take_out(vc, self.keep_alive, self.active):
            self.active[vc] = None  # active already: the newest again
            return True
        if not self.manage_active_queue():
            self.nh.stats[st.REQUESTS_THROTTLED_IN] += 1
            return False
        self.active[vc] = None
        return True

    def remove(self, vc: UnixNetVConnection) -> None:
        """``vc`` leaves both queues (closed, or no longer a session's)."""
        if vc in self.keep_alive:
            del self.keep_alive[vc]
        if vc in self.active:
            del self.active[vc]

    # ------------------------------------------------------------------ the limits

    def manage_keep_alive_queue(self) -> None:
        """Close the oldest keep-alive connections while both queues together hold more
        than the thread's share of ``max_connections_in``."""
        limit = self._per_thread(self.nh.config.max_connections_in)
        if not limit:
            return
        while self.keep_alive and len(self.keep_alive) + len(self.active) > limit:
            vc = next(iter(self.keep_alive))
            del self.keep_alive[vc]
            self._close(vc, keep_alive=True)

    def manage_active_queue(self) -> bool:
        """Whether one more request fits under the thread's share of ``max_requests_in``,
        after closing active connections whose timeouts have passed."""
        limit = self._per_thread(self.nh.config.max_requests_in)
        if not limit or len(self.active) < limit:
            return True
        now = self.nh.now
        for vc in list(self.active):
            inactive = vc.next_inactivity_timeout_at and vc.next_inactivity_timeout_at <= now
            expired = vc.next_activity_timeout_at and vc.next_activity_timeout_at <= now
            if inactive or expired:
                del self.active[vc]
                self._close(vc, keep_alive=False)
                if len(self.active) < limit:
                    return True
        return len(self.active) < limit

    def _close(self, vc: UnixNetVConnection, keep_alive: bool) -> None:
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


def _take_out(
    vc: UnixNetVConnection,
    likely: dict[UnixNetVConnection, None],
    other: dict[UnixNetVConnection, None],
) -> bool:
    """Take ``vc`` out of the queue it is in (one at most), looked for in ``likely`` first;
    whether it was in ``other``."""
    if vc in likely:
        del likely[vc]
        return False
    if vc in other:
        del other[vc]
        return True
    return False


__all__ = ["ConnectionQueues"]
