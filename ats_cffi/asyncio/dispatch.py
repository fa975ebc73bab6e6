"""TransportDispatch: the one continuation of every VCTransport of a Loop, and its table of
them by fd.

A transport's VC delivers its events here, and this finds the transport by the VC's fd:
one object per loop where a continuation of each transport's own, with a handler bound to
the transport and its context, cost ~390 B per idle connection. The table is a list indexed
by fd (fds are small and dense): 8 bytes a slot, and a lookup without an int object.
Compiled (``ats_cffi/_compiled.py``), as the VC path that calls it: each event of every
transport passes here, and an interpreted dispatch would be one more Python frame per event.
For the same reason the two steps of nearly every round trip are here too: a read handed to
a plain ``Protocol``'s ``data_received`` (``handle_event``), and ``write``'s checks and first
try of the socket with its counting (``TransportCore.write``); the rest of each is
``transport.py``'s.

The writes of a pass are held until its end (``hold_writes``, ``release_writes``, around
each pass of the loop's ``NetSelector`` and around the ready callbacks that each loop pass
runs, ``LoopCore.run_once``): a ``write`` of ``bytes`` that finds nothing kept before is
kept by reference, not sent, and every write kept goes out after the pass's reads (or
callbacks), as the NetHandler writes its VCs (``nethandler.WRITE_BATCH_BYTES`` bounds
both; a write of ``nethandler.WRITE_NOW_BYTES`` or more goes at once, its bytes still in the
CPU's cache).
Replies sent together reach a peer still awake from the first: each send to a peer asleep
in its wait makes the kernel wake it, an interrupt that the sender pays. Only ``bytes`` is
held, as a ``bytearray`` or ``memoryview`` may change once ``write`` returned. A transport
whose write buffer is looked at (``get_write_buffer_size``, so ``close``, ``write_eof``)
or which is closed by force sends what it holds first, and so does a second ``write``.

The table holds each transport's ``TransportCore``: the fields that those two steps read
(the fd, the context, the protocol, the lost count, what ``write`` kept). They live here,
not on the transport, because compiled code reads an interpreted object's slot by a
generic attribute lookup (~150 instructions each; four per read cost ~700 per round trip
of the asyncio echo), and a compiled object's field natively.
"""

from __future__ import annotations

import contextvars
import errno
from collections.abc import Callable, Iterator
from typing import Any, Final

from ats_cffi import _fastio
from ats_cffi.eventsystem import codes as _codes
from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.ioblock import BlockPool
from ats_cffi.eventsystem.iobuffer import IOBufferReader
from ats_cffi.eventsystem.iocopy import read_bytes
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.net.nethandler import WRITE_BATCH_BYTES, WRITE_NOW_BYTES
from ats_cffi.net.netvconnection import NetState, NetVConnection
from ats_cffi.net.stats import StatBlock
from ats_cffi.net.vcio import count_write

#: ``Context.run`` itself: a call of it is one C call, not a method looked up by name.
_run: Final = contextvars.Context.run
_send_left: Final = _fastio.send_left
#: ``Context.run(ctx, obj.name, arg)`` in one C call, with no bound method made.
_call_in: Final = _fastio.call_in
_READ_READY: Final = _codes.VC_EVENT_READ_READY
_EVENT_CONT: Final = _codes.EVENT_CONT
_NEG_EAGAIN: Final = -errno.EAGAIN
_WRITE_NOW: Final[int] = WRITE_NOW_BYTES
#: Bound once: compiled, a builtin that is not one of mypyc's primitives is looked up by
#: name in the builtins module on every use.
_memoryview: Final = memoryview
#: What the loop's exception handler is told when ``data_received`` raised.
DATA_RECEIVED_FAILED: Final = "Fatal error: protocol.data_received() call failed."


class TransportCore:
    """A VCTransport's fields that its reads and writes touch (the module doc says why they
    are here), and ``write``'s first steps. ``transport``: the VCTransport, which calls this
    ``write`` and is called back for all the rest (``_write_rest``, ``_write_lost``,
    ``_write_failed``). ``send_first``: ``write`` tries the socket before keeping bytes for
    the write VIO (not through TLS). ``dispatch``: the loop's, which holds the writes of a
    pass (the module doc)."""

    __slots__ = (
        "transport", "fd", "context", "stats", "send_first", "dispatch", "protocol", "lost",
        "eof", "empty_waiter", "wreader", "held", "data",
    )  # fmt: skip

    def __init__(
        self,
        transport: Any,
        fd: int,
        context: Any,
        stats: StatBlock,
        send_first: bool,
        dispatch: TransportDispatch,
    ) -> None:
        self.transport = transport
        self.fd = fd
        self.context = context
        self.stats = stats
        self.send_first = send_first
        self.dispatch = dispatch
        #: The protocol when it is a plain ``Protocol``: its reads go to ``data_received``
        #: from the dispatch. None for a ``BufferedProtocol``, and once released.
        self.protocol: Any = None
        #: asyncio's ``_conn_lost``: set once the connection is lost or closed; then each
        #: ``write`` counts one more (asyncio warns past a threshold).
        self.lost = 0
        #: ``write_eof`` was called.
        self.eof = False
        #: A sendfile's waiter for the write buffer to drain (``write`` refuses meanwhile).
        self.empty_waiter: Any = None
        #: The reader of what ``write`` kept (made at the first such write), which the
        #: VC's write VIO drains.
        self.wreader: IOBufferReader | None = None
        #: The ``bytes`` that ``write`` holds until the end of the pass, or None.
        self.held: bytes | None = None
        #: The ``bytes`` that the VC's read step read for ``data_received`` (a
        #: ``TransportVC``'s, transportvc.py), until its ``VC_EVENT_READ_READY`` takes them.
        self.data: bytes | None = None

    def __call__(self, data: Any) -> None:
        """``write(data)``: a VCTransport's ``write`` is its core (the class doc says why)."""
        self.write(data)

    def write(self, data: Any) -> None:
        """asyncio's ``write``: the checks, then one ``send`` when nothing is kept before
        (counted in the NetHandler's ``stats`` as a VC's write step is); what it did not
        take goes to the transport's ``_write_rest``."""
        if type(data) is not bytes and not isinstance(data, (bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self.eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        size = len(data) if type(data) is not _memoryview else data.nbytes  # in bytes
        if not size:
            return
        if self.lost:
            self.transport._write_lost()
            return
        if self.held is not None:
            self.release_held(True)  # in order
            if self.lost:  # its send failed: lost, as a write after it
                self.transport._write_lost()
                return
        r = self.wreader
        if self.send_first and (r is None or not r.read_avail()):  # the socket first
            d = self.dispatch
            if d.holding and type(data) is bytes and size < _WRITE_NOW and size <= d.hold_room:
                d.hold_room -= size
                self.held = data
                d.held.append(self)
                return
            self._send(data, size, True)
            return
        self.transport._write_rest(data, 0)

    def release_held(self, in_context: bool) -> None:
        """Send what ``write`` holds, if anything. ``in_context``: called in the transport's
        context (else what follows a short send runs in it)."""
        data = self.held
        if data is not None:
            self.held = None
            self._send(data, len(data), in_context)

    def _send(self, data: Any, size: int, in_context: bool) -> None:
        """One ``send`` of ``data`` (``size`` bytes), counted in the NetHandler's ``stats``
        as a VC's write step is; what it did not take goes to the transport's
        ``_write_rest``, an error to its ``_write_failed``."""
        left: int = _send_left(self.fd, data)
        if not left:
            count_write(self.stats, size)
            return
        count_write(self.stats, left if left < 0 else size - left)
        t = self.transport
        if left < 0 and left != _NEG_EAGAIN:
            if in_context:
                t._write_failed(-left)
            else:
                _run(self.context, t._write_failed, -left)
            return
        sent = 0 if left < 0 else size - left
        if in_context:
            t._write_rest(data, sent)
        else:
            _run(self.context, t._write_rest, data, sent)


class TransportDispatch(Continuation):
    """``handle_event(event, vio)``: ``on_event(t, event, vio)`` in the transport's
    context, for ``t`` the transport whose core was added for the fd of ``vio``'s VC.
    ``KeyError`` for a VC of no transport (the VC then closes:
    ``UnixNetVConnection._signal_and_update``).

    ``on_event`` is one function for every transport (``VCTransport._vc_event``). The loop's
    thread runs it all, under the loop's net mutex. A ``VC_EVENT_READ_READY`` of a transport
    whose core has a ``protocol`` (a plain ``Protocol``) and whose connection is not lost
    is handled here: the bytes its VC read (``TransportCore.data``), or else all that
    ``reader`` (the loop's one read buffer) holds, go to ``data_received``; what it raises
    goes to the transport's ``_fatal_error``. ``pool``: the loop thread's block pool (its
    NetHandler's), where the read blocks go back."""

    __slots__ = ("on_event", "reader", "pool", "_by_fd", "holding", "hold_room", "held")

    def __init__(
        self,
        mutex: ProxyMutex,
        on_event: Callable[[Any, int, Any], Any],
        reader: IOBufferReader,
        pool: BlockPool | None = None,
    ) -> None:
        super().__init__(mutex)
        self.on_event = on_event
        self.reader = reader
        self.pool = pool
        self._by_fd: list[TransportCore | None] = []
        #: A pass is under way: the transports' writes are held (the module doc) ...
        self.holding = False
        #: ... up to this many more bytes ...
        self.hold_room = 0
        #: ... by these cores.
        self.held: list[TransportCore] = []

    def handle_event(self, event: int = 0, data: Any = None) -> Any:
        vio: NetState = data
        vc: NetVConnection = vio.vc_server
        fd = vc.fd
        by_fd = self._by_fd
        c = by_fd[fd] if 0 <= fd < len(by_fd) else None
        if c is None:
            raise KeyError(fd)
        if event == _READ_READY and not c.lost:
            protocol = c.protocol
            if protocol is not None:
                self._data_received(c, protocol)
                return _EVENT_CONT
        return _run(c.context, self.on_event, c.transport, event, data)

    def _data_received(self, c: TransportCore, protocol: Any) -> None:
        ctx = c.context
        try:
            data = c.data
            if data is not None:  # read as bytes (transportvc.py)
                c.data = None
            else:
                # The loop's read buffer keeps its block (refilled by the next read, as
                # uvloop's loop-wide buffer): no trip through the pool per read.
                data = read_bytes(self.reader, -1, self.pool, True)
            _call_in(ctx, protocol, "data_received", data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            _run(ctx, c.transport._fatal_error, exc, DATA_RECEIVED_FAILED)

    def hold_writes(self) -> None:
        """A pass begins: the transports' writes are held until ``release_writes``."""
        self.holding = True
        self.hold_room = WRITE_BATCH_BYTES

    def release_writes(self) -> None:
        """The pass is over: send what the transports' writes held."""
        self.holding = False
        held = self.held
        if not held:
            return
        try:
            for c in held:
                try:
                    c.release_held(False)
                except Exception as exc:  # a bug of the transport: it alone is closed
                    _run(c.context, c.transport._fatal_error, exc, "Fatal error on transport")
        finally:
            held.clear()  # a core not reached sends at its next write, or when looked at

    def add(self, fd: int, core: TransportCore) -> None:
        """Make ``core`` the one of ``fd`` (replacing any other)."""
        by_fd = self._by_fd
        if fd >= len(by_fd):
            by_fd.extend([None] * max(fd + 1 - len(by_fd), len(by_fd), 64))
        by_fd[fd] = core

    def remove(self, fd: int, core: TransportCore) -> None:
        """Forget ``core`` as the one of ``fd``, if it still is (a closed VC's fd may be
        another connection's by now)."""
        by_fd = self._by_fd
        if 0 <= fd < len(by_fd) and by_fd[fd] is core:
            by_fd[fd] = None

    def get(self, fd: int) -> Any:
        """The transport of ``fd``, or None."""
        by_fd = self._by_fd
        c = by_fd[fd] if 0 <= fd < len(by_fd) else None
        return c.transport if c is not None else None

    def transports(self) -> Iterator[Any]:
        """Every transport of the table (a snapshot: one may be removed meanwhile)."""
        return iter([c.transport for c in self._by_fd if c is not None])
