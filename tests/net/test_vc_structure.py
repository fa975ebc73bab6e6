"""Where a VC's rules live: it is a plain Continuation, and the per-thread splice state
(net/splice.py's SpliceDriver) holds nothing once the spliced VCs are gone."""

from __future__ import annotations

import sys
from typing import Any

from ats_cffi.eventsystem.codes import EVENT_DONE, EVENT_IMMEDIATE, VC_EVENT_INACTIVITY_TIMEOUT
from ats_cffi.eventsystem.continuation import deliver, freed_handler
from ats_cffi.net import AcceptOptions, net_processor, net_stats
from ats_cffi.net.netvc import UnixNetVConnection

from .conftest import OPEN, Acceptor, client, recv_exactly, wait_until
from .test_splice import Owner


def test_events_can_be_delivered_to_a_vc_like_to_any_continuation() -> None:
    # A VC is made by Continuation.__init__ like any continuation (it once copied that
    # __init__, without ``calls_handler``, and ``deliver`` then raised AttributeError). Its
    # class handles its events itself (``handle_event``: its timeouts to ``main_event``,
    # without a bound method kept per VC), so ``deliver`` calls that.
    vc = UnixNetVConnection()
    try:
        assert vc.handler is None and not vc.calls_handler
        assert deliver(vc, EVENT_IMMEDIATE, None) == EVENT_DONE
        # Not on a net thread: the cop's timeout event is dropped, the VC stays open.
        assert deliver(vc, VC_EVENT_INACTIVITY_TIMEOUT, None) == EVENT_DONE
        assert not vc.closed
    finally:
        vc.free()


def listening(on_vc: Any) -> tuple[Any, int]:
    action = net_processor.accept(Acceptor(on_vc), AcceptOptions(local_address="127.0.0.1"))
    return action, action.na.port


def test_a_freed_vc_drops_events_without_calling_back(one_net_thread: Any) -> None:
    vcs: list[Any] = []
    action, port = listening(vcs.append)
    with client(port):
        assert wait_until(lambda: vcs)
        vc = vcs[0]
        vc.do_io_close()
        assert wait_until(lambda: vc.fd == -1)
    action.cancel()
    # free() set the freed handler: an event that still comes goes to it, not to
    # main_event.
    assert vc.handler is freed_handler
    assert deliver(vc, VC_EVENT_INACTIVITY_TIMEOUT, None) == EVENT_DONE
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_the_splice_driver_holds_nothing_once_its_spliced_vcs_are_freed(
    one_net_thread: Any,
) -> None:
    owner = Owner()
    action, port = listening(owner.on_vc)
    with client(port) as c:
        c.sendall(b"spliced")
        assert recv_exactly(c, 7) == b"spliced"
        (splice,) = owner.splices
        driver = splice.nh.splice
        # The VC names its splice; the driver lists no spliced end (nor any per-end object).
        assert splice.vcs[0].splice_end is splice
        assert not hasattr(driver, "ends")
    assert wait_until(lambda: owner.events)
    action.cancel()
    assert wait_until(lambda: net_stats.get(OPEN) == 0)
    assert not driver.ready and not driver.retries
    assert driver.retry_due == 0.0
    # No reference cycle is left, so that reference counting frees it (and its native
    # ends) as soon as its owner lets go: only the owner's lists, this frame and the call
    # hold it.
    assert splice.handler is freed_handler
    assert all(vc.splice_end is None for vc in splice.vcs)
    owner.events.clear()
    assert sys.getrefcount(splice) == 3
