"""Echo servers for perf/echo_bench.py: ats_cffi (its VIO API, spliced, and an asyncio
Protocol on its asyncio loop), asyncio and uvloop.

    python perf/servers.py {ats,ats_splice,ats_asyncio,asyncio,uvloop} [--port P]
    python perf/servers.py ats [--net-threads N] [--accept-threads N] [--reuseport]
    python perf/servers.py {ats,asyncio,uvloop} --backlog N
    python perf/servers.py {ats,ats_asyncio,asyncio,uvloop} --tls-cert FILE --tls-key FILE
    python perf/servers.py {ats_asyncio,asyncio,uvloop} --streams

Listens on 127.0.0.1:P (0: any free port), prints ``READY <port>`` on stdout once
listening, echoes every byte back, and exits cleanly on SIGTERM or SIGINT.

``--streams``: the asyncio echo written with streams instead of a Protocol
(``asyncio.start_server``, a handler that reads up to 64 KiB, writes it and drains, until
EOF), the same code on the three loops.

With ``--tls-cert``/``--tls-key`` the same echo runs over TLS: ats with the net core's
(``AcceptOptions(tls=ServerContext.from_files(...))``: SSLNetVConnections under the same
VIO continuation), ats_asyncio with ``create_server(ssl=ServerContext...)`` (the net core's
TLS under the loop's transports), asyncio and uvloop with their own (``ssl=`` an
``ssl.SSLContext``, TLS 1.2 minimum). ats_splice cannot: a splice would move the encrypted
bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from typing import Any

from _common import HOST


def ready(port: int) -> None:
    print(f"READY {port}", flush=True)


# -- ats_cffi -----------------------------------------------------------------------------


#: The ats echo's read-buffer water mark: reading pauses while more than this many bytes
#: wait to be written back. asyncio's Protocol reads up to 256 KiB per call and buffers
#: writes without a bound; 128 KiB keeps the ats echo bounded while letting a 100 KiB
#: message move in one read/write cycle instead of one per 32 KiB block.
ATS_WATER_MARK = 131072


def ats_echo_acceptor(water_mark: int = ATS_WATER_MARK):
    """An accept continuation that starts an ats_cffi echo on every connection it gets."""
    from ats_echo import Echo

    from ats_cffi.eventsystem import Continuation, ProxyMutex
    from ats_cffi.net.codes import NET_EVENT_ACCEPT

    class Acceptor(Continuation):
        def __init__(self) -> None:
            super().__init__(ProxyMutex())
            self.set_handler(self.on_event)

        def on_event(self, event: int, vc) -> None:
            if event == NET_EVENT_ACCEPT:
                Echo(vc, water_mark)

    return Acceptor()


def ats_splice_acceptor(buffer_size: int = ATS_WATER_MARK):
    """An accept continuation that splices every connection to itself (net/splice.py): the
    echo's bytes move natively through a ``buffer_size``-byte buffer (the same bound as the
    VIO echo's water mark); the Python side sees only the end of each connection."""
    from ats_cffi.eventsystem import VC_EVENT_EOS, VC_EVENT_ERROR, Continuation, ProxyMutex
    from ats_cffi.net.codes import NET_EVENT_ACCEPT
    from ats_cffi.net.splice import Splice

    class Acceptor(Continuation):
        def __init__(self) -> None:
            super().__init__(ProxyMutex())
            self.set_handler(self.on_event)

        def on_event(self, event: int, data) -> None:
            if event == NET_EVENT_ACCEPT:
                Splice(self, data, buffer_size=buffer_size)
            elif event == VC_EVENT_EOS or event == VC_EVENT_ERROR:
                data.close()

    return Acceptor()


def run_ats(
    port: int,
    water_mark: int = ATS_WATER_MARK,
    net_threads: int = 1,
    accept_threads: int | None = None,
    reuseport: bool = False,
    backlog: int | None = None,
    splice: bool = False,
    tls: tuple[str, str] | None = None,
) -> None:
    """``splice``: the native echo (``ats_splice_acceptor``) instead of the VIO one.
    ``tls``: (certificate, key) files, for TLS on every accepted connection (not with
    ``splice``).
    ``accept_threads`` None: the ``proxy.config.accept_threads`` record (0: accept on
    every net thread, EPOLLEXCLUSIVE, or one socket per thread with ``reuseport``; ATS's
    default is 1, a dedicated accept thread).
    ``backlog`` None: the ``proxy.config.net.listen_backlog`` record (somaxconn)."""
    from ats_cffi.net import AcceptOptions, net_processor
    from ats_cffi.net.tls import ServerContext

    if tls and splice:
        raise ValueError("a splice cannot serve TLS (it would move the encrypted bytes)")

    # Blocked before the net threads exist (they inherit the mask), then taken by sigwait:
    # a handler calling Event.set() while this thread sits in Event.wait() can deadlock on
    # the event's own lock.
    sigs = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    net_processor.start(net_threads)
    opt = AcceptOptions(
        local_address=HOST,
        port=port,
        accept_threads=accept_threads,
        reuseport=reuseport,
        backlog=backlog,
        tls=ServerContext.from_files(*tls) if tls else None,
    )
    acceptor = ats_splice_acceptor(water_mark) if splice else ats_echo_acceptor(water_mark)
    action = net_processor.accept(acceptor, opt)
    ready(action.na.port)
    try:
        signal.sigwait(sigs)
    finally:
        action.cancel()
        net_processor.shutdown()


# -- asyncio / uvloop ---------------------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The streams echo (``--streams``): what an asyncio user writes first."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # the load generator's closes may reset (SO_LINGER 0)
    finally:
        writer.close()


def ssl_context(tls: tuple[str, str]) -> ssl.SSLContext:
    """The asyncio and uvloop echos' TLS: the certificate and key, TLS 1.2 or 1.3."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(*tls)
    return ctx


async def serve_asyncio(
    port: int, backlog: int | None = None, tls: Any = None, streams: bool = False
) -> None:
    """``tls``: what ``create_server`` takes as ``ssl`` (None: plaintext). ``streams``:
    ``echo_stream`` under ``asyncio.start_server`` instead of ``EchoProtocol``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    kw: dict[str, Any] = {} if backlog is None else {"backlog": backlog}
    if streams:
        server = await asyncio.start_server(echo_stream, HOST, port, ssl=tls, **kw)
    else:
        server = await loop.create_server(EchoProtocol, HOST, port, ssl=tls, **kw)
    ready(server.sockets[0].getsockname()[1])
    await stop.wait()
    server.close()
    await server.wait_closed()


TLSFiles = tuple[str, str] | None


def run_asyncio(
    port: int, water_mark: int = 0, backlog: int | None = None, tls: TLSFiles = None,
    streams: bool = False,
) -> None:  # fmt: skip
    asyncio.run(serve_asyncio(port, backlog, ssl_context(tls) if tls else None, streams))


def run_uvloop(
    port: int, water_mark: int = 0, backlog: int | None = None, tls: TLSFiles = None,
    streams: bool = False,
) -> None:  # fmt: skip
    import uvloop

    uvloop.run(serve_asyncio(port, backlog, ssl_context(tls) if tls else None, streams))


def run_ats_asyncio(
    port: int, water_mark: int = 0, backlog: int | None = None, tls: TLSFiles = None,
    streams: bool = False,
) -> None:  # fmt: skip
    """The same asyncio code on ats_cffi's asyncio loop (``ats_cffi.asyncio``); with
    ``tls``, its TLS is the net core's (``ssl=`` a ``ServerContext``)."""
    import ats_cffi.asyncio
    from ats_cffi.net.tls import ServerContext

    ctx = ServerContext.from_files(*tls) if tls else None
    ats_cffi.asyncio.run(serve_asyncio(port, backlog, ctx, streams))


SERVERS = {
    "ats": run_ats,
    "ats_splice": run_ats,
    "ats_asyncio": run_ats_asyncio,
    "asyncio": run_asyncio,
    "uvloop": run_uvloop,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("server", choices=sorted(SERVERS))
    p.add_argument("--port", type=int, default=0)
    p.add_argument(
        "--water-mark",
        type=int,
        default=ATS_WATER_MARK,
        help="ats: MIOBuffer water mark; ats_splice: splice buffer size (bytes)",
    )
    p.add_argument("--net-threads", type=int, default=1, help="ats only: net threads")
    p.add_argument(
        "--accept-threads",
        type=int,
        default=None,
        help="ats only: dedicated accept threads (0: accept on the net threads)",
    )
    p.add_argument(
        "--reuseport",
        action="store_true",
        help="ats only, with --accept-threads 0: one SO_REUSEPORT listen socket per net thread",
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=None,
        help="listen backlog (default: asyncio's 100; ats: the listen_backlog record)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve TLS: the certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    p.add_argument(
        "--streams",
        action="store_true",
        help="ats_asyncio, asyncio, uvloop: the echo with asyncio.start_server (streams)",
    )
    args = p.parse_args(argv)
    if args.streams and args.server in ("ats", "ats_splice"):
        p.error("--streams is the asyncio echo: ats_asyncio, asyncio or uvloop")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    if tls and args.server == "ats_splice":
        p.error(
            "ats_splice cannot serve TLS: the splice pumps a connection's raw bytes, which "
            "would be the encrypted records (use ats, the VIO echo)"
        )
    if args.server in ("ats", "ats_splice"):
        run_ats(
            args.port,
            args.water_mark,
            args.net_threads,
            args.accept_threads,
            args.reuseport,
            args.backlog,
            splice=args.server == "ats_splice",
            tls=tls,
        )
    else:
        SERVERS[args.server](args.port, args.water_mark, args.backlog, tls, args.streams)
    return 0


if __name__ == "__main__":
    sys.exit(main())
