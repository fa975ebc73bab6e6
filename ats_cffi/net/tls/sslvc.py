"""SSLNetVConnection: a UnixNetVConnection whose bytes go through OpenSSL (ATS's
SSLNetVConnection).

Its read and write steps are the VC's (``netvc.py``: VIO progress, events, back-pressure),
with the bytes decrypted into and encrypted from the IOBuffer blocks by the C helpers
(``vcio.read_into_buffer`` with an ``ssl``, ``vcio.tls_write_from_reader``); OpenSSL reads
and writes the socket itself. What TLS adds is here:

- **The handshake** runs in the VC's turns, read or write, from its first one: WANT_READ
  clears ``read.triggered`` (the next read edge brings the turn back), WANT_WRITE clears
  ``write.triggered``. Until it is done the continuation hears nothing (the socket's first
  write edge is eaten), and ``tls_turns`` gives the VC its turns whether or not a VIO is
  enabled (the NetHandler's ``_turns``). Done: both sides are queued again with
  ``triggered`` set (OpenSSL may already hold the peer's first bytes), and a VIO of zero
  bytes gets its ``READ_COMPLETE`` / ``WRITE_COMPLETE`` (how a continuation learns that
  the handshake is done, as in ATS). A failed handshake is ``VC_EVENT_ERROR``
  (``lerrno`` EPROTO: a TLS error, counted in ``ssl_error_ssl``, its reason logged at
  debug) or ``VC_EVENT_EOS`` (the peer closed; ``ssl_error_syscall``) to a VIO's
  continuation, or closes the VC when there is none.
- **The edge-trigger rule with OpenSSL's buffer.** Only OpenSSL's WANT_READ clears
  ``read.triggered``: a read step that stops at its limit or the water mark keeps it, so
  the plaintext OpenSSL still holds is read on the next turn, with no epoll edge (none
  would come). A short read of plaintext proves nothing; a short read() of the socket
  in the same step (OpenSSL's, through the C BIO) with nothing left inside OpenSSL does, as
  for a plain VC (one of an earlier turn does not: arrivals since have had their edge).
- **A read that must write** (OpenSSL answering the peer while the socket's send buffer
  is full): the read side waits for the write edge (``read_wants_write``), which queues it
  again; a write that must read, the other way round.
- **A write retried gets the same bytes**: after WANT_WRITE, OpenSSL must see the same
  record again; the reader's bytes are not consumed until written, and ``write_retry``
  keeps the record's size.
- **Record sizes** (``proxy.config.ssl.max_record_size``): the largest, a fixed size, or
  dynamic as in ATS (``-1``: ``vcio.TLS_SMALL_RECORD`` bytes until
  ``RECORD_BYTES_THRESHOLD`` were sent, and again after ``RECORD_IDLE_THRESHOLD`` s without
  a write).
- **The handshake timeout** (``proxy.config.ssl.handshake_timeout_in``, inbound) is an
  inactivity timeout set when the handshake starts, so the InactivityCop closes a stalled
  one (``ssl_handshake_timeouts``); the continuation's own is put back once it is done.
- Closing sends close_notify (not on an abort), and a client keeps its session for the
  next connection (``ClientContext.keep_session``).
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any, Final

from ats_cffi import sys as _sys
from ats_cffi._native import ffi, lib
from ats_cffi.eventsystem import codes as _codes
from ats_cffi.eventsystem.iobuffer import IOBufferReader, MIOBuffer
from ats_cffi.eventsystem.vio import VIOOp
from ats_cffi.net import stats as st
from ats_cffi.net.netvc import UnixNetVConnection
from ats_cffi.net.netvconnection import NetState
from ats_cffi.net.tls.context import error_text
from ats_cffi.net.vcio import TLS_MAX_RECORD, read_into_buffer, tls_write_from_reader

if TYPE_CHECKING:
    from ats_cffi.net.nethandler import NetHandler

log: Final = logging.getLogger("ats.ssl")

_AGAIN: Final[int] = _sys.AGAIN
_TLS_WANT_WRITE: Final[int] = lib.ATS_TLS_WANT_WRITE
_TLS_WANT_READ: Final[int] = lib.ATS_TLS_WANT_READ
_TLS_FAILED: Final[int] = lib.ATS_TLS_FAILED
_ECONNRESET: Final[int] = errno.ECONNRESET
_EPROTO: Final[int] = errno.EPROTO
_READ: Final[int] = VIOOp.READ
_WRITE: Final[int] = VIOOp.WRITE
VC_EVENT_EOS: Final[int] = _codes.VC_EVENT_EOS
VC_EVENT_READ_COMPLETE: Final[int] = _codes.VC_EVENT_READ_COMPLETE
VC_EVENT_WRITE_COMPLETE: Final[int] = _codes.VC_EVENT_WRITE_COMPLETE
VC_EVENT_INACTIVITY_TIMEOUT: Final[int] = _codes.VC_EVENT_INACTIVITY_TIMEOUT
_handshake: Final = lib.ats_tls_handshake
_tls_free: Final = lib.ats_tls_free
_tls_shutdown: Final = lib.ats_tls_shutdown
_session_reused: Final = lib.ats_tls_session_reused
_last_error: Final = lib.ats_tls_last_error

#: Dynamic record sizing (ATS's SSL_DEF_TLS_RECORD_BYTE_THRESHOLD, _MSEC_THRESHOLD; the
#: small records' size is ``vcio.TLS_SMALL_RECORD``).
RECORD_BYTES_THRESHOLD: Final = 1_000_000
RECORD_IDLE_THRESHOLD: Final = 1.0

_OWED_READ: Final = 1
_OWED_WRITE: Final = 2

#: ``tls_state``: the handshake is under way, done, or failed.
HANDSHAKING: Final = 0
ESTABLISHED: Final = 1
FAILED: Final = 2


class SSLNetVConnection(UnixNetVConnection):
    """A TLS connection, server side (accepted with ``AcceptOptions.tls``) or client side
    (``connect_re`` with ``NetVCOptions.tls``). ``tls``: its ServerContext or
    ClientContext (``context.py``); ``host``: the name a client verifies and sends in its
    SNI; ``session_key``: where a client keeps its session."""

    __slots__ = (
        "tls",
        "ssl",
        "server",
        "host",
        "session_key",
        "tls_state",
        "read_wants_write",
        "write_wants_read",
        "write_retry",
        "bytes_sent",
        "last_write_at",
        "saved_inactivity",
        "record_setting",
        "tls_error",
        "tls_reason",
        "owed",
    )

    def __init__(
        self, options: Any, tls: Any, server: bool, host: str | None = None,
        session_key: Any = None,
    ) -> None:  # fmt: skip
        super().__init__(options)
        self.tls = tls
        self.ssl: Any = None
        self.server = server
        self.host = host
        self.session_key = session_key
        self.tls_state = HANDSHAKING
        self.tls_turns = True
        self.read_wants_write = False
        self.write_wants_read = False
        self.write_retry = 0
        self.bytes_sent = 0
        self.last_write_at = 0.0
        #: The continuation's inactivity timeout while the handshake's is set (-1: none).
        self.saved_inactivity = -1.0
        #: ``proxy.config.ssl.max_record_size`` as the context read it (``_record_sizes``).
        self.record_setting: int = tls.max_record_size
        #: A failed handshake's errno for the continuation (0: EOS, the peer closed).
        self.tls_error = 0
        #: OpenSSL's reason for a failed handshake ("" for none, or a peer that closed).
        self.tls_reason = ""
        #: Zero-byte VIOs whose completion the handshake's end owes (``_OWED_*`` bits).
        self.owed = 0

    # ------------------------------------------------------------------ turns

    def net_read_io(self, nh: NetHandler) -> None:
        if self._tls_turn(nh, self.read, _READ):
            UnixNetVConnection.net_read_io(self, nh)

    def write_to_net(self, nh: NetHandler) -> None:
        if self.connecting:
            UnixNetVConnection.write_to_net(self, nh)  # the connect completes first
        elif self._tls_turn(nh, self.write, _WRITE):
            UnixNetVConnection.write_to_net(self, nh)

    def _tls_turn(self, nh: NetHandler, s: NetState, op: int) -> bool:
        """TLS's part of side ``s``'s turn: a handshake step, the event a failed handshake
        or a zero-byte VIO is owed, or the other side's wait for this side's edge ended.
        True when the VC's own read or write step should follow."""
        reading = s is self.read
        if self.tls_state != ESTABLISHED:
            if self.tls_state == FAILED:
                self._tell(nh, s, op)
                return False
            if not self._handshake_turn(nh):
                return False
        elif self.write_wants_read if reading else self.read_wants_write:
            # The other side waited for this side's edge, which has come: its turn again.
            if reading:
                self.write_wants_read = False
            else:
                self.read_wants_write = False
            self.tls_turns = self.read_wants_write or self.write_wants_read
            other = self.write if reading else self.read
            other.triggered = True
            self._queue(nh, other)
        if self.owed & (_OWED_READ if reading else _OWED_WRITE):
            self._tell(nh, s, op)
            return False
        return s.enabled

    def _queue(self, nh: NetHandler, s: NetState) -> None:
        if s.enabled and s.triggered:
            nh.enqueue_ready(self, s)

    def _tell(self, nh: NetHandler, s: NetState, op: int) -> None:
        """Side ``s``'s turn owes its continuation an event: how the handshake failed
        (EOS, or ERROR with ``tls_error``), or the completion of a zero-byte VIO once it
        is done. Under the VIO's mutex (retried later when another thread holds it)."""
        reading = s is self.read
        m = self._take_turn(nh, s, op, self.write if reading else self.read)
        if m is None:
            return
        try:
            if self.tls_state == FAILED:
                s.triggered = False
                if self.tls_error:
                    self._signal_error(s, self.tls_error, nh)
                else:
                    self._signal_done(s, VC_EVENT_EOS, nh)
            else:
                self.owed &= ~(_OWED_READ if reading else _OWED_WRITE)
                vio = s
                if vio.nbytes <= vio.ndone:
                    done = VC_EVENT_READ_COMPLETE if reading else VC_EVENT_WRITE_COMPLETE
                    self._signal_done(s, done, nh)
                else:
                    self._reschedule(s, nh)  # bytes were asked for meanwhile: move them
        finally:
            m.unlock()

    # ------------------------------------------------------------------ bytes

    def read_bytes(self, nh: NetHandler, buf: MIOBuffer, limit: int) -> tuple[int, int]:
        total, last = read_into_buffer(nh, self.fd, buf, limit, not self.read.hup, self.ssl)
        if total:
            nh.tls_stats[st.SSL_READ_BYTES] += total
        if last >= 0 or last == _AGAIN:
            return total, last
        if last == _TLS_WANT_WRITE:
            # OpenSSL must send first (the socket's buffer is full): wait for the write edge
            self.read_wants_write = True
            self.tls_turns = True
            self.write.triggered = False
            return total, _AGAIN
        return total, self._io_error(nh, last)

    def write_bytes(self, nh: NetHandler, reader: IOBufferReader, towrite: int) -> tuple[int, int]:
        record, small_until = self._record_sizes(nh)
        total, last, retry = tls_write_from_reader(
            nh, self.ssl, reader, towrite, record, small_until, self.write_retry
        )
        self.write_retry = retry
        if total:
            nh.tls_stats[st.SSL_WRITE_BYTES] += total
            self.bytes_sent += total
            self.last_write_at = nh.now
        if last >= 0 or last == _AGAIN:
            return total, last
        if last == _TLS_WANT_READ:
            self.write_wants_read = True
            self.tls_turns = True
            self.read.triggered = False
            return total, _AGAIN
        return total, self._io_error(nh, last)

    def _io_error(self, nh: NetHandler, last: int) -> int:
        """A read or write step's error as the ``-errno`` the VC signals, counted."""
        if last == _TLS_FAILED:
            nh.tls_stats[st.SSL_ERROR_SSL] += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%r: TLS error: %s", self, error_text(_last_error()))
            return -_EPROTO
        nh.tls_stats[st.SSL_ERROR_SYSCALL] += 1
        return last

    def _record_sizes(self, nh: NetHandler) -> tuple[int, int]:
        """The write step's largest record, and how many of its first bytes go in small
        records (dynamic sizing: until ``RECORD_BYTES_THRESHOLD`` bytes were sent since
        the connection began or was last idle ``RECORD_IDLE_THRESHOLD`` s)."""
        size = self.record_setting
        if size > 0:
            return size, 0
        if size == 0:
            return TLS_MAX_RECORD, 0
        if self.last_write_at and nh.now - self.last_write_at > RECORD_IDLE_THRESHOLD:
            self.bytes_sent = 0  # idle: small records again, as for a new connection
        left = RECORD_BYTES_THRESHOLD - self.bytes_sent
        return TLS_MAX_RECORD, left if left > 0 else 0

    # ------------------------------------------------------------------ handshake

    def _handshake_turn(self, nh: NetHandler) -> bool:
        """One step of the handshake; True when it is done now and the turn may go on."""
        ssl = self.ssl
        if ssl is None:
            ssl = self._start_handshake(nh)
            if ssl is None:
                return False
        r: int = _handshake(ssl)
        if r == 1:
            self._established(nh)
            return not self.closed
        if r == _AGAIN:
            self.read.triggered = False
        elif r == _TLS_WANT_WRITE:
            self.write.triggered = False
        else:
            self._handshake_failed(nh, r)
        return False

    def _start_handshake(self, nh: NetHandler) -> Any:
        stats = nh.tls_stats
        if self.server:
            stats[st.SSL_ATTEMPTS_IN] += 1
            ssl = self.tls.new_ssl(self.fd)
            timeout: float = self.tls.handshake_timeout_in
            if timeout > 0:
                self.saved_inactivity = self.inactivity_timeout_in
                self.set_inactivity_timeout(timeout)
        else:
            stats[st.SSL_ATTEMPTS_OUT] += 1
            ssl = self.tls.new_ssl(self.fd, self.host, self.session_key)
        if ssl == ffi.NULL:
            log.error("%r: SSL_new failed", self)
            self._handshake_failed(nh, -errno.ENOMEM)
            return None
        self.ssl = ssl
        return ssl

    def _established(self, nh: NetHandler) -> None:
        self.tls_state = ESTABLISHED
        self.tls_turns = False
        stats = nh.tls_stats
        reused = _session_reused(self.ssl)
        if self.server:
            stats[st.SSL_SUCCESS_IN] += 1
            if reused:
                stats[st.SSL_SESSION_HIT_IN] += 1
        else:
            stats[st.SSL_SUCCESS_OUT] += 1
            if reused:
                stats[st.SSL_SESSION_REUSED_OUT] += 1
        if self.saved_inactivity >= 0:
            saved = self.saved_inactivity
            self.saved_inactivity = -1.0
            self.set_inactivity_timeout(saved)
        self.net_activity(nh.now)
        # OpenSSL or the socket may hold more for either side: both take a turn.
        for s, op, bit in ((self.read, _READ, _OWED_READ), (self.write, _WRITE, _OWED_WRITE)):
            s.triggered = True
            vio = s
            if vio.op == op and vio.nbytes <= vio.ndone:
                self.owed |= bit
            self._queue(nh, s)

    def _handshake_failed(self, nh: NetHandler, r: int) -> None:
        """Count and log the failure, and have the continuations told (``_tell``) on their
        sides' next turns; a VC without a VIO is closed."""
        self.tls_state = FAILED
        self.tls_turns = False
        if r == _TLS_FAILED:
            nh.tls_stats[st.SSL_ERROR_SSL] += 1
            self.tls_reason = error_text(_last_error())
            log.debug("%r: TLS handshake failed: %s", self, self.tls_reason)
            self.tls_error = _EPROTO
        else:
            nh.tls_stats[st.SSL_ERROR_SYSCALL] += 1
            self.tls_error = 0 if r == 0 or r == -_ECONNRESET else -r
        if self.read.op != _READ and self.write.op != _WRITE:
            self.closed = 1  # nobody to tell
            if self.recursion == 0:
                nh.free_netevent(self)
            return
        for s in (self.read, self.write):
            s.triggered = True
            self._queue(nh, s)

    def tls_info(self) -> dict[str, Any]:
        """The established session (empty before the handshake is done): ``version``
        ("TLSv1.3"), ``cipher``, ``alpn`` (None when none was chosen), ``servername`` (the
        SNI), ``resumed``."""
        ssl = self.ssl
        if ssl is None or self.tls_state != ESTABLISHED:
            return {}
        out = ffi.new("char[]", 256)
        texts = []
        for f in (lib.ats_tls_cipher, lib.ats_tls_alpn, lib.ats_tls_servername):
            n = f(ssl, out, 256)
            texts.append(ffi.string(out).decode(errors="replace") if n > 0 else None)
        v = lib.ats_tls_version(ssl)
        version = {lib.ATS_TLS_V1_2: "TLSv1.2", lib.ATS_TLS_V1_3: "TLSv1.3"}.get(v, str(v))
        return {
            "version": version,
            "cipher": texts[0],
            "alpn": texts[1],
            "servername": texts[2],
            "resumed": bool(_session_reused(ssl)),
        }

    # ------------------------------------------------------------------ timeouts, end

    def main_event(self, event: int, e: Any) -> int:
        if event == VC_EVENT_INACTIVITY_TIMEOUT and self.tls_state == HANDSHAKING:
            nh = self.nh
            due = self.next_inactivity_timeout_at
            if nh is not None and due and due < nh.now:
                nh.tls_stats[st.SSL_HANDSHAKE_TIMEOUTS] += 1
                if not self.read.op and not self.write.op:
                    self.closed = 1  # nobody to tell
        return UnixNetVConnection.main_event(self, event, e)

    def free(self) -> None:
        ssl = self.ssl
        if ssl is not None:
            self.ssl = None
            if self.tls_state == ESTABLISHED:
                if self.closed == 1 and self.fd >= 0:
                    _tls_shutdown(ssl)  # close_notify; an abort (closed -1) sends none
                if not self.server:
                    self.tls.keep_session(self.session_key, ssl)
            _tls_free(ssl)
        UnixNetVConnection.free(self)


__all__ = ["SSLNetVConnection"]
