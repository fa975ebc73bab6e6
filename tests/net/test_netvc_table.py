"""ATS's NetVCTest table (src/iocore/net/NetVCTest.cc) over real loopback sockets.

Each case is a pair: the active side (a VC from ``connect_re``) and the passive side (the
VC the listener accepted), each with the bytes it sends and reads, the VIO sizes, how many
bytes it adds to its write buffer per ``WRITE_READY``, its timeout, and the event expected
to end its read and its write. ``EVENT_NONE`` is the table's wildcard ("an error or a
timeout, whichever side gets it"). Timeouts are the table's seconds scaled by ``SCALE``;
inactivity timeout = timeout, active timeout = timeout + 5, as in ATS. The net thread runs on
the test's FakeClock, which moves on by a cop period whenever both sides are quiet (no byte
moved over two settled passes) and slower while bytes move: a case that ends by a timeout
sees its time pass as fast as the thread can check. Both VCs run on one net thread,
accepted inline, which makes the table's races deterministic: in "werr" the passive side
closes (its peer's unread bytes make that a reset) while the active side is still adding
129 bytes per pass.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from ats_cffi.eventsystem import (
    Continuation,
    EventCode,
    MIOBuffer,
    ProxyMutex,
)
from ats_cffi.net import AcceptOptions, net_stats
from ats_cffi.net.codes import IO_SHUTDOWN_READ, IO_SHUTDOWN_WRITE, NET_EVENT_ACCEPT, NET_EVENT_OPEN
from tests.conftest import WAIT, FakeClock
from tests.net.conftest import COP

E = EventCode
SCALE = 0.1
PATTERN = bytes(range(256)) * 4100  # any run of the byte sequence, by slicing


@dataclass(frozen=True)
class Side:
    bytes_to_send: int
    nbytes_write: int
    bytes_to_read: int
    nbytes_read: int
    write_per: int
    timeout: int
    read_term: int
    write_term: int


# name: (active, passive) — the values of NetVCTest.cc's netvc_tests_def.
TABLE: dict[str, tuple[Side, Side]] = {
    "basic": (
        Side(2000, 2000, 2000, 2000, 50, 10, E.VC_EVENT_READ_COMPLETE, E.VC_EVENT_WRITE_COMPLETE),
        Side(2000, 2000, 2000, 2000, 50, 10, E.VC_EVENT_READ_COMPLETE, E.VC_EVENT_WRITE_COMPLETE),
    ),
    "basic2": (
        Side(10001, 10001, 5001, 5001, 1024, 10, E.VC_EVENT_READ_COMPLETE,
             E.VC_EVENT_WRITE_COMPLETE),
        Side(5001, 5001, 10001, 10001, 1024, 10, E.VC_EVENT_READ_COMPLETE,
             E.VC_EVENT_WRITE_COMPLETE),
    ),
    "large": (
        Side(1000000, 1000000, 500000, 500000, 8192, 10, E.VC_EVENT_READ_COMPLETE,
             E.VC_EVENT_WRITE_COMPLETE),
        Side(500000, 500000, 1000000, 1000000, 8192, 10, E.VC_EVENT_READ_COMPLETE,
             E.VC_EVENT_WRITE_COMPLETE),
    ),
    "larget": (
        Side(1000000, 1000000, 500000, 500000, 40000, 10, E.VC_EVENT_READ_COMPLETE,
             E.VC_EVENT_WRITE_COMPLETE),
        Side(500000, 500000, 1000000, 1000000, 40000, 10, E.VC_EVENT_READ_COMPLETE,
             E.VC_EVENT_WRITE_COMPLETE),
    ),
    "eos": (
        Side(4000, 4000, 10, 10, 8192, 10, E.VC_EVENT_READ_COMPLETE, E.VC_EVENT_WRITE_COMPLETE),
        Side(10, 10, 6000, 6000, 8192, 10, E.VC_EVENT_EOS, E.VC_EVENT_WRITE_COMPLETE),
    ),
    "werr": (
        Side(4000, 4000, 10, 10, 129, 10, E.VC_EVENT_READ_COMPLETE, E.VC_EVENT_ERROR),
        Side(10, 10, 10, 10, 129, 10, E.VC_EVENT_READ_COMPLETE, E.VC_EVENT_WRITE_COMPLETE),
    ),
    "itimeout": (
        Side(6000, 8000, 10, 10, 512, 10, E.VC_EVENT_READ_COMPLETE,
             E.VC_EVENT_INACTIVITY_TIMEOUT),
        Side(10, 10, 6000, 8000, 512, 20, E.VC_EVENT_EOS, E.VC_EVENT_WRITE_COMPLETE),
    ),
    "smallt": (
        Side(400, 400, 500, 500, 1, 15, E.VC_EVENT_READ_COMPLETE, E.VC_EVENT_WRITE_COMPLETE),
        Side(500, 500, 400, 400, 1, 15, E.VC_EVENT_READ_COMPLETE, E.VC_EVENT_WRITE_COMPLETE),
    ),
    "overflow": (
        Side(1000000, 1000000, 50, 50, 1, 20, E.VC_EVENT_READ_COMPLETE, E.EVENT_NONE),
        Side(50, 50, 0, 35000, 1024, 35, E.EVENT_NONE, E.VC_EVENT_WRITE_COMPLETE),
    ),
}  # fmt: skip


class NetVCTest(Continuation):
    """One side of a case: the same protocol as ATS's NetVCTest, written anew."""

    def __init__(self, side: Side, role: str) -> None:
        super().__init__(ProxyMutex())
        self.side = side
        self.role = role
        self.vc: Any = None
        self.read_vio: Any = None
        self.write_vio: Any = None
        self.write_seed = 0
        self.read_seed = 0
        self.actual_bytes_sent = 0
        self.actual_bytes_read = 0
        self.read_done = False
        self.write_done = False
        self.read_term: int | None = None
        self.write_term: int | None = None
        self.errors: list[str] = []
        self.finished = threading.Event()
        self.set_handler(self.main_handler)

    def start_test(self, vc: Any) -> None:
        s = self.side
        self.vc = vc
        vc.set_inactivity_timeout(s.timeout * SCALE)
        vc.set_active_timeout((s.timeout + 5) * SCALE)
        self.read_buffer = MIOBuffer(32768)
        self.write_buffer = MIOBuffer(32768)
        self.reader_for_rbuf = self.read_buffer.alloc_reader()
        self.reader_for_wbuf = self.write_buffer.alloc_reader()
        if s.nbytes_read > 0:
            self.read_vio = vc.do_io_read(self, s.nbytes_read, self.read_buffer)
        else:
            self.read_done = True
        if s.nbytes_write > 0:
            self.write_vio = vc.do_io_write(self, s.nbytes_write, self.reader_for_wbuf)
        else:
            self.write_done = True

    def fill_buffer(self, n: int) -> int:
        seed = self.write_seed
        self.write_buffer.write(PATTERN[seed : seed + n])
        self.write_seed = (seed + n) & 0xFF
        return n

    def consume_and_check_bytes(self) -> bool:
        r = self.reader_for_rbuf
        want = self.side.bytes_to_read - self.actual_bytes_read
        if want <= 0:
            return True
        got = r.read(min(want, r.read_avail()))
        seed = self.read_seed
        if got != PATTERN[seed : seed + len(got)]:
            return False
        self.actual_bytes_read += len(got)
        self.read_seed = (seed + len(got)) & 0xFF
        return True

    def record_error(self, msg: str) -> None:
        self.errors.append(f"{self.role}: {msg}")
        self.vc.do_io_close()
        self.finished.set()

    def write_finished(self) -> None:
        s = self.side
        if self.write_vio.ndone != s.nbytes_write and s.write_term == E.VC_EVENT_WRITE_COMPLETE:
            self.record_error("write: bad ndone value")
            return
        self.write_done = True
        if self.read_done:
            self.vc.do_io_close()
            self.finished.set()
        else:
            self.vc.do_io_shutdown(IO_SHUTDOWN_WRITE)

    def read_finished(self) -> None:
        s = self.side
        if (
            self.read_vio.ndone != s.nbytes_read
            and s.read_term != E.VC_EVENT_EOS
            and s.read_term != E.EVENT_NONE
        ):
            self.record_error("read: bad ndone value")
            return
        self.read_done = True
        if self.write_done:
            self.vc.do_io_close()
            self.finished.set()
        else:
            self.vc.do_io_shutdown(IO_SHUTDOWN_READ)

    def write_handler(self, event: int) -> None:
        s = self.side
        if event == E.VC_EVENT_WRITE_READY:
            if self.write_vio.ndone < s.bytes_to_send:
                left = s.bytes_to_send - self.actual_bytes_sent
                self.actual_bytes_sent += self.fill_buffer(min(left, s.write_per))
                self.write_vio.reenable()
        elif event == E.VC_EVENT_WRITE_COMPLETE:
            self.write_term = event
            self.write_finished()
        elif event in (E.VC_EVENT_INACTIVITY_TIMEOUT, E.VC_EVENT_ACTIVE_TIMEOUT, E.EVENT_ERROR):
            self.write_term = event
            if s.write_term not in (event, E.EVENT_NONE):
                self.record_error(f"write: unexpected error or timeout {event}")
            else:
                self.write_finished()
        else:
            self.record_error(f"write: unknown event {event}")

    def read_handler(self, event: int) -> None:
        s = self.side
        if event == E.VC_EVENT_READ_READY:
            if not self.consume_and_check_bytes():
                self.record_error("read content corrupt")
            else:
                self.read_vio.reenable()
        elif event == E.VC_EVENT_READ_COMPLETE:
            self.read_term = event
            if not self.consume_and_check_bytes():
                self.record_error("read content corrupt")
            else:
                self.read_finished()
        elif event == E.VC_EVENT_EOS:
            self.read_term = event
            if s.read_term not in (E.VC_EVENT_EOS, E.EVENT_NONE):
                self.record_error("read: unexpected EOS")
            else:
                self.read_finished()
        elif event in (E.VC_EVENT_INACTIVITY_TIMEOUT, E.VC_EVENT_ACTIVE_TIMEOUT, E.EVENT_ERROR):
            self.read_term = event
            if s.read_term not in (event, E.EVENT_NONE):
                self.record_error(f"read: unexpected error or timeout {event}")
            else:
                self.read_finished()
        else:
            self.record_error(f"read: unknown event {event}")

    def main_handler(self, event: int, data: Any) -> None:
        if event in (NET_EVENT_ACCEPT, NET_EVENT_OPEN):
            self.start_test(data)
        elif self.read_vio is not None and data is self.read_vio:
            self.read_handler(event)
        elif self.write_vio is not None and data is self.write_vio:
            self.write_handler(event)
        else:
            self.errors.append(f"{self.role}: event {event} for an unknown VIO")


def progress(sides: tuple[NetVCTest, ...]) -> tuple[tuple[int, int, bool], ...]:
    return tuple((s.actual_bytes_sent, s.actual_bytes_read, s.finished.is_set()) for s in sides)


def run_until_finished(clock: FakeClock, sides: tuple[NetVCTest, ...], limit: float) -> None:
    """Let the case run, for at most ``limit`` seconds of its clock: between two settled
    passes of the net thread, the clock moves on by one cop period when nothing moved, by a
    sixteenth of one while bytes move (an active timeout ends a case that never goes quiet;
    an inactivity timeout cannot come while its VC moves bytes)."""
    start = clock.now
    deadline = time.monotonic() + WAIT
    while not all(s.finished.is_set() for s in sides):
        assert clock.now - start <= limit, f"not finished after {limit} s of its clock"
        assert time.monotonic() < deadline, f"not finished after {WAIT} s of real time"
        before = progress(sides)
        clock.settle()
        clock.settle()
        clock.advance(COP if progress(sides) == before else COP / 16)


@pytest.mark.parametrize("name", list(TABLE))
def test_netvc_table_case_ends_with_the_expected_events(
    start_net: Any, fake_clock: FakeClock, name: str
) -> None:
    one_net_thread = start_net(1, clock=fake_clock)
    active_side, passive_side = TABLE[name]
    passive = NetVCTest(passive_side, "passive")
    active = NetVCTest(active_side, "active")
    # Per-thread accept: the passive VC starts on the net thread in the pass that accepts
    # it, which keeps the table's races (see the module doc) deterministic.
    opts = AcceptOptions(local_address="127.0.0.1", accept_threads=0)
    listener = one_net_thread.accept(passive, opts)
    try:
        one_net_thread.connect_re(active, ("127.0.0.1", listener.na.port))
        limit = (max(active_side.timeout, passive_side.timeout) + 5) * SCALE + 10
        run_until_finished(fake_clock, (active, passive), limit)
    finally:
        listener.cancel()
    assert active.errors == [] and passive.errors == []
    for side in (active, passive):
        s = side.side
        if s.nbytes_read > 0 and s.read_term != E.EVENT_NONE:
            assert side.read_term == s.read_term, f"{side.role} read ended with {side.read_term}"
        if s.nbytes_write > 0 and s.write_term != E.EVENT_NONE:
            assert side.write_term == s.write_term, f"{side.role} write ended {side.write_term}"
        if side.read_term == E.VC_EVENT_READ_COMPLETE:
            assert side.actual_bytes_read == s.bytes_to_read
        if side.write_term == E.VC_EVENT_WRITE_COMPLETE:
            assert side.write_vio.ndone == s.nbytes_write
    # Both VCs were closed by their tests: nothing is left open.
    assert net_stats.get("proxy.process.net.connections_currently_open") == 0
