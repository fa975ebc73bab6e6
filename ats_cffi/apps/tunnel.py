"""The tunnel service: an L4 reverse proxy (ATS's blind tunnel).

Each accepted client is joined to a new upstream connection (``connect_re``). Bytes flow both
ways through one MIOBuffer per direction: the source VC's read VIO fills it, the sink VC's
write VIO drains it. The buffers have a water mark (``WATER_MARK``), so a sink that lags
stops the reads from its source: a slow reader on one side slows the writer on the other
and memory stays bounded. A half-close is carried across: the source's EOS ends the sink's
write VIO at what is buffered, and once that is flushed the sink is shut down for writing
(``do_io_shutdown``). When both directions are finished, or on any error or timeout, both
connections are closed. A failed upstream connect closes the client.

Both VCs' VIOs share the session's mutex, which every event holds: the two directions,
possibly on two net threads, never run the session at the same time.

By default (``native=True``) the two connections are spliced instead (``ats_cffi.net.splice``,
when both are on one net thread, as ``connect_re`` arranges): the same buffers, water mark,
back-pressure and half-close rules, but the bytes move natively and the session hears only
of the end (both directions finished, an error or a timeout). ``ats-cffi tunnel --vio``
keeps the VIO path, and so does a connection with TLS on either side (the splice would move
its encrypted bytes).

``upstream_tls`` (a ``ClientContext``; ``ats-cffi tunnel --upstream-tls``) makes the
upstream connections TLS, verified for the upstream's host as given, which is also the SNI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ats_cffi.apps.service import BLOCK_SIZE, WATER_MARK, Service, Session, check_flag
from ats_cffi.eventsystem import INT64_MAX, VIO, Action, MIOBuffer
from ats_cffi.eventsystem.codes import (
    VC_EVENT_EOS,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
    VC_EVENT_WRITE_READY,
)
from ats_cffi.net import NetVCOptions, UnixNetVConnection, net_config, net_processor
from ats_cffi.net.codes import (
    IO_SHUTDOWN_WRITE,
    NET_EVENT_OPEN,
    NET_EVENT_OPEN_FAILED,
    net_strerror,
)
from ats_cffi.net.ratelog import RateLimitedLog
from ats_cffi.net.splice import Splice
from ats_cffi.net.tls import ClientContext, SSLNetVConnection
from ats_cffi.sys import PORT_MAX, ip_family

log = logging.getLogger("ats.apps.tunnel")

TOTAL = "proxy.process.tunnel.total_client_connections_blind_tcp"
CURRENT = "proxy.process.tunnel.current_client_connections_blind_tcp"
CONNECT_FAILURES = "proxy.process.tunnel.upstream_connect_failures"


def start_name_resolution(host: str, start: bool = True) -> Callable[[], None] | None:
    """Make ``connect_re`` able to reach ``host`` (after ``net_processor.start``).

    A numeric address needs nothing (returns None). A host name needs the DNS layer: start
    ``ats_cffi.dns.dns_processor`` and return its ``stop``, to call before the net processor
    shuts down (``start=False`` only checks that the layer exists). Without it, raise
    ``ValueError``.
    """
    if ip_family(host):
        return None
    try:
        from ats_cffi.dns import dns_processor  # type: ignore[import-not-found, attr-defined]
    except ImportError:
        raise ValueError(
            f"host name {host!r} needs the DNS layer (ats_cffi.dns), which this install "
            "lacks: use a numeric address"
        ) from None
    if not start:
        return None
    dns_processor.start()
    return dns_processor.stop


def check_upstream(call: str, upstream: Any) -> tuple[str, int]:
    """``upstream`` if it is a ``(host, port)`` that ``connect_re`` can take (a numeric
    address, or a host name when the DNS layer is there); else ``TypeError``/``ValueError``
    naming ``call``: refused here, not at every connection."""
    if not isinstance(upstream, tuple) or len(upstream) != 2:
        raise TypeError(f"{call}: upstream must be a (host, port) tuple, got {upstream!r}")
    host, port = upstream
    if not isinstance(host, str):
        raise TypeError(f"{call}: upstream host must be a str, not {type(host).__name__}")
    if type(port) is not int or not 0 < port <= PORT_MAX:
        raise ValueError(f"{call}: upstream port must be in 1..{PORT_MAX}, got {port!r}")
    if "\0" in host or not ip_family(host):
        try:
            from ats_cffi.dns.processor import check_host_name
        except ImportError:
            start_name_resolution(host, start=False)  # raises: no DNS layer
        else:
            check_host_name(call, "upstream host", host)
    return upstream


class TunnelSession(Session):
    """One client joined to one upstream connection (see the module doc). ``vc`` is the
    client's."""

    total_stat = TOTAL
    current_stat = CURRENT

    def __init__(self, service: TunnelService, client: UnixNetVConnection) -> None:
        super().__init__(service)
        self.vc = self.client = client
        self.server: UnixNetVConnection | None = None
        self.c2s = MIOBuffer(BLOCK_SIZE, WATER_MARK)
        self.s2c = MIOBuffer(BLOCK_SIZE, WATER_MARK)
        self.c_read: VIO | None = None
        self.c_write: VIO | None = None
        self.s_read: VIO | None = None
        self.s_write: VIO | None = None
        #: Directions whose sink has been flushed and shut down for writing.
        self.c2s_done = False
        self.s2c_done = False
        self.connect_action: Action | None = None
        self.splice: Splice | None = None
        self.opened()
        self.set_handler(self.state_connecting)
        with self.mutex:  # type: ignore[union-attr]
            # The result is delivered with this mutex held: not before we have the action.
            try:
                self.connect_action = net_processor.connect_re(
                    self, service.upstream, service.connect_options()
                )
            except (OSError, ValueError, RuntimeError) as exc:
                service.connect_failed_log(
                    "tunnel: cannot connect to %r: %s", service.upstream, exc
                )
                service.stats.incr(CONNECT_FAILURES)
                self.close()

    # ------------------------------------------------------------------ states

    def state_connecting(self, event: int, data: Any) -> None:
        """``NET_EVENT_OPEN`` starts both directions; ``NET_EVENT_OPEN_FAILED`` closes."""
        self.connect_action = None
        if event == NET_EVENT_OPEN:
            server: UnixNetVConnection = data
            self.server = server
            if self.closed:  # stopped while connecting
                server.do_io_close()
                return
            timeout = self.service.inactivity_timeout  # type: ignore[attr-defined]
            if timeout:
                self.client.set_inactivity_timeout(timeout)
                server.set_inactivity_timeout(timeout)
            client = self.client
            if (
                self.service.native  # type: ignore[attr-defined]
                and server.nh is client.nh
                and not isinstance(client, SSLNetVConnection)
                and not isinstance(server, SSLNetVConnection)
            ):
                self.set_handler(self.state_spliced)
                self.splice = Splice(self, client, server, buffer_size=WATER_MARK)
                return
            self.set_handler(self.state_tunnel)
            self.c_read = client.do_io_read(self, INT64_MAX, self.c2s)
            self.s_write = server.do_io_write(self, INT64_MAX, self.c2s.alloc_reader())
            self.s_read = server.do_io_read(self, INT64_MAX, self.s2c)
            self.c_write = client.do_io_write(self, INT64_MAX, self.s2c.alloc_reader())
        elif event == NET_EVENT_OPEN_FAILED:
            service: TunnelService = self.service  # type: ignore[assignment]
            host, port = service.upstream
            service.connect_failed_log(
                "tunnel: connect to %s:%d failed: %s", host, port, net_strerror(data)
            )
            service.stats.incr(CONNECT_FAILURES)
            self.close()

    def state_spliced(self, event: int, splice: Splice) -> None:
        """The splice ended: both directions finished (EOS), an error, or a timeout."""
        self.close()

    def state_tunnel(self, event: int, vio: VIO) -> None:
        """Move bytes: data in wakes the other side's writer, room out wakes the reader."""
        if self.closed:
            return
        if event == VC_EVENT_READ_READY:
            (self.s_write if vio is self.c_read else self.c_write).reenable()  # type: ignore[union-attr]
        elif event == VC_EVENT_WRITE_READY:
            (self.c_read if vio is self.s_write else self.s_read).reenable()  # type: ignore[union-attr]
        elif event == VC_EVENT_EOS:
            self.source_done(vio)
        elif event == VC_EVENT_WRITE_COMPLETE:
            self.sink_done(vio)
        else:  # VC_EVENT_ERROR, INACTIVITY_TIMEOUT, ACTIVE_TIMEOUT: give up both sides
            self.close()

    # ------------------------------------------------------------------ half-close

    def source_done(self, read_vio: VIO) -> None:
        """The source half-closed: end the sink's write at what is buffered."""
        sink = self.s_write if read_vio is self.c_read else self.c_write
        assert sink is not None
        sink.done()
        if sink.ntodo() <= 0:
            self.sink_done(sink)
        else:
            sink.reenable()

    def sink_done(self, write_vio: VIO) -> None:
        """Everything of one direction is written: pass the half-close on."""
        if write_vio is self.s_write:
            self.c2s_done = True
            vc = self.server
        else:
            self.s2c_done = True
            vc = self.client
        assert vc is not None
        try:
            vc.do_io_shutdown(IO_SHUTDOWN_WRITE)
        except OSError as exc:
            log.debug("tunnel: shutdown of %r: %s", vc, exc)
        if self.c2s_done and self.s2c_done:
            self.close()

    def close(self) -> None:
        """Close both connections (with the session's mutex held), or stop connecting."""
        if self.closed:
            return
        if self.connect_action is not None:
            self.connect_action.cancel()
            self.connect_action = None
        if self.server is not None:
            self.server.do_io_close()
        super().close()  # the client's, the gauge, the registry

    def release(self) -> None:
        super().release()
        self.c2s.dealloc_all_readers()
        self.s2c.dealloc_all_readers()
        self.splice = None  # it holds the session (its continuation)


class TunnelService(Service):
    """``ats-cffi tunnel``: ``upstream`` is the ``(host, port)`` every client is joined to."""

    service_name = "tunnel"
    connects_per_accept = 1  # its upstream
    stat_names = (TOTAL, CURRENT, CONNECT_FAILURES)

    def __init__(
        self,
        upstream: tuple[str, int],
        inactivity_timeout: float = 0.0,
        worker: int | None = None,
        native: bool = True,
        upstream_tls: ClientContext | None = None,
    ) -> None:
        super().__init__(inactivity_timeout, worker)
        self.upstream = check_upstream("TunnelService", upstream)
        self.native = check_flag("TunnelService", "native", native)
        if upstream_tls is not None and not isinstance(upstream_tls, ClientContext):
            raise TypeError(
                "TunnelService: upstream_tls must be a ClientContext or None, "
                f"not {type(upstream_tls).__name__}"
            )
        self.upstream_tls = upstream_tls
        #: Upstream connect failures: a flood of them (a dead upstream, the fd limit) is
        #: one line a minute, with a count.
        self.connect_failed_log = RateLimitedLog(log)

    def connect_options(self) -> NetVCOptions | None:
        """The options of an upstream connection: None (``connect_re``'s defaults, from the
        ``*_out`` records) without TLS; with it, the same plus the client context and the
        upstream's host as the SNI and the name verified."""
        if self.upstream_tls is None:
            return None
        return NetVCOptions(
            sockopt_flags=net_config.sock_option_flag_out,
            recv_bufsize=net_config.sock_recv_buffer_size_out,
            send_bufsize=net_config.sock_send_buffer_size_out,
            tls=self.upstream_tls,
            sni_servername=self.upstream[0],
        )

    def start_session(self, vc: UnixNetVConnection) -> None:
        TunnelSession(self, vc)
