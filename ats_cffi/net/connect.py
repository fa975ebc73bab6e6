"""An outgoing connection's life until it is open: ``ConnectAction`` (what ``connect_re``
returns) drives its VC's non-blocking connect (ATS's ``UnixNetVConnection::connectUp``).

Order of a connect, on the VC's net thread:

0. ``connect_re`` on a net thread counts the connection open at once
   (``NetHandler.count_connect``), so that the throttle sees it before its socket exists;
1. ``connect_up``: refuse it if the connections throttle says so (``-ENET_THROTTLING``,
   counted in ``connections_throttled_out``), open the socket, apply the options,
   register it with epoll, *then*
   ``connect()`` (with edge trigger, the connect's writable edge could otherwise come
   before the registration and never be reported), and arm the connect timeout;
2. the socket's first write edge reaches ``UnixNetVConnection.write_to_net``, which sees
   ``vc.connecting`` and calls ``complete``: ``SO_ERROR`` says how the connect ended;
3. ``NET_EVENT_OPEN`` with the VC, or ``NET_EVENT_OPEN_FAILED`` with ``-errno``
   (``-ETIMEDOUT`` when the timeout fired first), to the continuation, with its mutex held,
   unless the action was cancelled. A failed connect's VC is freed; an open one belongs to
   the continuation.

The timeout event and the continuation are this module's; the VC keeps only ``connecting``
(its write edge means "connect done" while it is set) and ``action`` (this object).
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

from ats_cffi import sys as _sys
from ats_cffi._native import lib
from ats_cffi.eventsystem.continuation import Continuation, freed_handler
from ats_cffi.eventsystem.event import Action
from ats_cffi.net import stats as st
from ats_cffi.net.codes import ENET_THROTTLING, NET_EVENT_OPEN, NET_EVENT_OPEN_FAILED
from ats_cffi.net.throttle import ThrottleType, check_net_throttle, throttle_warning

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler
    from ats_cffi.net.netvc import UnixNetVConnection

log = logging.getLogger("ats.iocore_net")


class ConnectAction(Action):
    """What ``connect_re`` returns: ``cancel()`` stops the callback and closes the
    connection if it is not yet open."""

    def __init__(self, cont: Continuation, vc: UnixNetVConnection) -> None:
        super().__init__(cont)
        self.vc = vc
        #: The connect timeout's event while it is armed.
        self.timeout_event: Any = None

    def _cancelled_locked(self) -> None:
        vc = self.vc
        if (vc.connecting or vc.nh is None) and not vc.closed:
            vc.do_io_close()

    # ------------------------------------------------------------------ the steps

    def connect_up(self, nh: NetHandler, address: Any) -> None:
        """Open, register, then ``connect()`` (module doc, step 1). A failure on the way is
        reported as ``NET_EVENT_OPEN_FAILED``."""
        vc = self.vc
        if not vc.counted_open and check_net_throttle(ThrottleType.CONNECT):
            nh.stats[st.CONNECTIONS_THROTTLED_OUT] += 1
            throttle_warning(ThrottleType.CONNECT)
            self.failed(nh, ENET_THROTTLING)
            return
        try:
            vc.fd = _sys.socket(vc.family, lib.SOCK_STREAM)
            vc.options.apply(vc.fd, vc.family)
            if vc.options.local_address is not None:
                _sys.bind(vc.fd, vc.options.local_address)
            nh.start_io(vc)
            vc.connecting = True
            _sys.connect(vc.fd, address)
        except OSError as exc:
            self.failed(nh, exc.errno or errno.EIO)
            return
        except Exception:  # options changed after connect_re checked them, say
            log.exception("connect_re: setting up the socket failed")
            self.failed(nh, errno.EINVAL)
            return
        vc.set_remote_addr(address)
        nh.start_cop(vc)
        timeout = vc.options.connect_timeout
        if timeout is None:
            timeout = nh.config.connect_timeout
        if timeout:
            self.timeout_event = nh.thread.schedule_in(
                Continuation(vc.mutex, self._timed_out), timeout
            )

    def _timed_out(self, event: int, e: Any) -> None:
        self.timeout_event = None
        vc = self.vc
        if vc.connecting and not vc.closed:
            self.failed(vc.nh, errno.ETIMEDOUT)

    def complete(self, nh: NetHandler) -> None:
        """The socket's first write edge (step 2): read ``SO_ERROR`` and report (step 3)."""
        vc = self.vc
        err = _sys.so_error(vc.fd)
        if err:
            self.failed(nh, err)
            return
        vc.connecting = False
        self.cancel_timeout()
        m = self.mutex
        assert m is not None  # an Action takes its continuation's mutex
        if not m.try_lock():  # another thread holds it: retry after net.retry_delay
            vc.connecting = True
            nh.retry_later(vc, vc.write)
            return
        try:
            if self.cancelled:
                vc.do_io_close()
                return
            vc.signal_action(self.continuation, NET_EVENT_OPEN)  # type: ignore[arg-type]
        finally:
            m.unlock()
        vc.connected(nh)

    def failed(self, nh: NetHandler | None, err: int) -> None:
        """Report ``NET_EVENT_OPEN_FAILED`` with ``-err`` (unless cancelled) and free the VC."""
        vc = self.vc
        vc.connecting = False
        self.cancel_timeout()
        vc.lerrno = err
        if nh is not None:
            nh.stats[st.CONNECT_FAILURES] += 1
        if not self.cancelled:
            m = self.mutex
            assert m is not None
            if m.try_lock():
                try:
                    self._tell_failed(err)
                finally:
                    m.unlock()
            elif nh is not None:
                # Another thread holds the continuation's mutex: a net thread never waits
                # for one. An event tells it instead; the thread delivers it with the mutex
                # held, retrying while it is busy.
                nh.thread.schedule_imm(Continuation(m, lambda event, e: self._tell_failed(err)))
            else:
                with m:
                    self._tell_failed(err)
        vc.closed = 1
        if nh is None:
            vc.free()
        elif vc.nh is not None:
            nh.free_netevent(vc)
        else:
            nh.free_unstarted(vc)

    def _tell_failed(self, err: int) -> None:
        """``NET_EVENT_OPEN_FAILED`` with ``-err``, unless cancelled (mutex held)."""
        if self.cancelled:
            return
        try:
            self.continuation.handle_event(NET_EVENT_OPEN_FAILED, -err)  # type: ignore[union-attr]
        except Exception:
            log.exception("NET_EVENT_OPEN_FAILED handler raised")

    def cancel_timeout(self) -> None:
        """Disarm the connect timeout (VC's thread: no lock needed to stop its event)."""
        ev, self.timeout_event = self.timeout_event, None
        if ev is not None:
            ev.cancelled = True
            # A cancelled event stays queued until its time: its continuation must not keep
            # this action and its VC alive until then.
            ev.continuation.handler = freed_handler


__all__ = ["ConnectAction"]
