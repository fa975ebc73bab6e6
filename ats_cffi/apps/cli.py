"""The ``ats-cffi`` command (also ``python -m ats_cffi``): echo, tunnel and http services.

    ats-cffi echo   [--listen HOST:PORT] [--vio]            (default 127.0.0.1:7007)
    ats-cffi tunnel --listen HOST:PORT --upstream HOST:PORT [--vio]
                    [--upstream-tls [--upstream-ca FILE]]
    ats-cffi http   [--listen HOST:PORT]                    (default 127.0.0.1:8080)

Each takes ``--tls-cert FILE --tls-key FILE`` (one certificate) or ``--tls-config FILE``
(ATS's ssl_multicert.config: certificates chosen by SNI) to serve TLS (``apps/tls.py``).

Once listening it prints ``ats-cffi SERVICE listening on HOST:PORT`` per listener. SIGTERM or
SIGINT stop it gracefully (see ``ats_cffi.apps.runner``), SIGHUP reloads ``--config``.
Exit status: 0 after a stop, 1 when it cannot start (a port in use), 2 for bad options or
configuration (one line on stderr).

Records are applied in this order: the net core's defaults (ATS's, but for accepting on
the net threads, ``proxy.config.accept_threads`` 0, where ATS has one dedicated accept
thread: under the GIL that thread runs nothing in parallel and costs a hand-off per batch of
connections -- measured, 14.2 against 12.0 µs of CPU per accept, and 82 against 63 µs per
HTTP request on a new connection; ``net/config.py``), the app's own defaults (no
``TCP_DEFER_ACCEPT`` unless asked: a blind tunnel may carry protocols where the server
speaks first), the ``--config`` file, then the command-line options, which win.
"""

from __future__ import annotations

import argparse
import logging
import math
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ats_cffi.apps.config import (
    ConfigError,
    apply_records,
    load_records,
    reset_records,
    validate_records,
)
from ats_cffi.apps.runner import (
    PROG,
    SERVICES,
    CommandError,
    Settings,
    UsageError,
    command_tls,
    error_line,
    report_error,
    serve,
)
from ats_cffi.apps.tunnel import start_name_resolution
from ats_cffi.net import net_config
from ats_cffi.net.processor import MAX_NET_THREADS
from ats_cffi.sys import PORT_MAX, ip_family

#: Records whose default the command changes (see the module doc).
APP_RECORD_DEFAULTS: dict[str, Any] = {
    "proxy.config.net.defer_accept": 0,
}
_CHECK_FREQUENCY = "proxy.config.net.inactivity_check_frequency"
#: The record ``--tls-config`` sets.
MULTICERT_RECORD = "proxy.config.ssl.server.multicert.filename"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        error_line(message)
        sys.exit(UsageError.exit_status)


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → ``(host, port)``; argparse type (one-line errors)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"expected [IPV6]:PORT, got {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise argparse.ArgumentTypeError(f"write an IPv6 address as [{host}]:PORT")
    if not host:
        raise argparse.ArgumentTypeError(f"missing host in {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 <= port <= PORT_MAX:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, port


#: Most worker processes the options take (and net threads: MAX_NET_THREADS, the net
#: processor's own bound).
MAX_WORKERS = 1024


def _number(
    kind: type, minimum: float, strict: bool = False, maximum: float | None = None
) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not math.isfinite(value):  # nan would pass every comparison below
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < minimum or (strict and value == minimum):
            op = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"must be {op} {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
        return value

    return convert


def _common_options() -> ArgumentParser:
    """The options every service takes (a parent parser of each subcommand)."""
    common = ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument(
        "--net-threads",
        type=_number(int, 1, maximum=MAX_NET_THREADS),
        default=1,
        metavar="N",
        help="net threads (default 1; they share the GIL: scale with --workers)",
    )
    g.add_argument(
        "--accept-threads",
        type=_number(int, 0),
        metavar="N",
        help="dedicated accept threads per listener, 0 = accept on the net threads "
        "(record proxy.config.accept_threads; default 0, 1 in ATS)",
    )
    g.add_argument(
        "--inactivity-timeout",
        type=_number(float, 0, strict=True),
        metavar="S",
        help="close a connection after S seconds without traffic (http and the --stats "
        "listener: default 120, as ATS's keep_alive_no_activity_timeout_in)",
    )
    g.add_argument(
        "--connections-throttle",
        type=_number(int, 0),
        metavar="N",
        help="refuse connections beyond N open (proxy.config.net.connections_throttle; 0 = off)",
    )
    g.add_argument(
        "--defer-accept",
        type=_number(int, 0),
        metavar="S",
        help="TCP_DEFER_ACCEPT seconds (proxy.config.net.defer_accept; default 0)",
    )
    g.add_argument(
        "--stats",
        type=parse_hostport,
        metavar="HOST:PORT",
        help="also serve /_stats and /metrics over HTTP here",
    )
    g.add_argument(
        "--workers",
        type=_number(int, 1, maximum=MAX_WORKERS),
        default=1,
        metavar="N",
        help="N processes sharing the port(s) with SO_REUSEPORT (default 1)",
    )
    g.add_argument(
        "--drain-timeout",
        type=_number(float, 0),
        default=10.0,
        metavar="S",
        help="on SIGTERM/SIGINT, wait up to S seconds for connections to close (default 10)",
    )
    g.add_argument(
        "--config", metavar="FILE", help="records file (proxy.config.* keys), TOML or YAML"
    )
    g.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error", "critical"),
                   help="stderr log level (default info)")  # fmt: skip
    return common


def build_parser() -> ArgumentParser:
    common = _common_options()
    parser = ArgumentParser(
        prog=PROG,
        description="Run a service on ats_cffi, Apache Traffic Server's net core in Python.",
    )
    sub = parser.add_subparsers(dest="service", metavar="{echo,tunnel,http}", required=True)
    echo = sub.add_parser("echo", parents=[common], help="send every byte back")
    echo.add_argument("--listen", type=parse_hostport, default=("127.0.0.1", 7007),
                      metavar="HOST:PORT", help="default 127.0.0.1:7007")  # fmt: skip
    tunnel = sub.add_parser("tunnel", parents=[common], help="L4 reverse proxy (blind tunnel)")
    tunnel.add_argument("--listen", type=parse_hostport, required=True, metavar="HOST:PORT")
    tunnel.add_argument("--upstream", type=parse_hostport, required=True, metavar="HOST:PORT",
                        help="where every connection is forwarded")  # fmt: skip
    for sp in (echo, tunnel):
        sp.add_argument("--vio", action="store_true",
                        help="move the bytes through VIOs and a Python continuation instead "
                        "of the native splice (slower)")  # fmt: skip
    http = sub.add_parser("http", parents=[common], help="HTTP/1.1 server with a stats page")
    http.add_argument("--listen", type=parse_hostport, default=("127.0.0.1", 8080),
                      metavar="HOST:PORT", help="default 127.0.0.1:8080")  # fmt: skip
    for sp in (echo, tunnel, http):
        _tls_options(sp, upstream=sp is tunnel)
    return parser


def _tls_options(sp: argparse.ArgumentParser, upstream: bool) -> None:
    """The TLS options of a service (``upstream``: the tunnel's to its upstream too)."""
    g = sp.add_argument_group("TLS")
    g.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve TLS with this certificate chain (PEM, leaf first; with --tls-key)",
    )
    g.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    g.add_argument("--tls-config", metavar="FILE",
                   help="serve TLS with the certificates of an ssl_multicert.config file, "
                   "chosen by SNI (proxy.config.ssl.server.multicert.filename)")  # fmt: skip
    if upstream:
        g.add_argument("--upstream-tls", action="store_true",
                       help="connect to the upstream over TLS, verifying its certificate "
                       "against the upstream's host as given (also the SNI)")  # fmt: skip
        g.add_argument("--upstream-ca", metavar="FILE",
                       help="CA certificates (PEM) that verify the upstream (default: the "
                       "system's; proxy.config.ssl.client.CA.cert.filename)")  # fmt: skip


def _tls_settings(args: argparse.Namespace, cli_records: dict[str, Any]) -> dict[str, Any]:
    """The TLS fields of ``Settings`` (``--tls-config`` goes in ``cli_records``, as the
    record it sets); ``UsageError`` for options that do not go together."""
    cert, key, multicert = args.tls_cert, args.tls_key, args.tls_config
    if cert is not None and key is None:
        raise UsageError("--tls-cert needs --tls-key (the certificate's private key)")
    if key is not None and cert is None:
        raise UsageError("--tls-key needs --tls-cert")
    if multicert is not None:
        if cert is not None:
            raise UsageError("--tls-config and --tls-cert/--tls-key are mutually exclusive")
        if not multicert:
            raise UsageError("--tls-config: empty file name")
        cli_records[MULTICERT_RECORD] = multicert
    upstream_tls = getattr(args, "upstream_tls", False)
    upstream_ca = getattr(args, "upstream_ca", None)
    if upstream_ca is not None and not upstream_tls:
        raise UsageError("--upstream-ca needs --upstream-tls")
    return {"tls_cert": cert, "tls_key": key, "upstream_tls": upstream_tls,
            "upstream_ca": upstream_ca}  # fmt: skip


def _listen_host(host: str, option: str) -> str:
    """A listen address as a numeric IP (``localhost`` and other names resolved once)."""
    if ip_family(host):
        return host
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise UsageError(f"{option} {host}: {exc.strerror or exc}") from None
    return str(infos[0][4][0])


def parse_args(argv: Sequence[str] | None) -> Settings:
    """Settings from the command line; ``SystemExit(2)`` with one line for bad options."""
    args = build_parser().parse_args(argv)
    cli_records: dict[str, Any] = {}
    if args.accept_threads is not None:
        cli_records["proxy.config.accept_threads"] = args.accept_threads
    if args.connections_throttle is not None:
        cli_records["proxy.config.net.connections_throttle"] = args.connections_throttle
    if args.defer_accept is not None:
        cli_records["proxy.config.net.defer_accept"] = args.defer_accept
    listen = (_listen_host(args.listen[0], "--listen"), args.listen[1])
    stats = None
    if args.stats is not None:
        stats = (_listen_host(args.stats[0], "--stats"), args.stats[1])
    upstream = getattr(args, "upstream", None)
    if upstream is not None and upstream[1] == 0:
        raise UsageError(f"--upstream: port must be in 1..{PORT_MAX}")
    tls = _tls_settings(args, cli_records)
    return Settings(
        service=args.service,
        listen=listen,
        upstream=upstream,
        stats=stats,
        net_threads=args.net_threads,
        inactivity_timeout=args.inactivity_timeout or 0.0,
        workers=args.workers,
        drain_timeout=args.drain_timeout,
        config=args.config,
        log_level=args.log_level,
        cli_records=cli_records,
        vio=getattr(args, "vio", False),
        **tls,
    )


def configure_records(settings: Settings) -> None:
    """Set ``net_config`` from defaults, the app's default, the file and the options (in
    that order). ``UsageError`` for a bad file or value."""
    reset_records()
    apply_records(APP_RECORD_DEFAULTS)
    file_records: dict[str, Any] = {}
    try:
        if settings.config is not None:
            file_records = load_records(settings.config)
        validate_records(settings.cli_records, "command line")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    apply_records(file_records)
    apply_records(settings.cli_records)
    timeout = settings.inactivity_timeout
    if timeout and _CHECK_FREQUENCY not in file_records:
        # The InactivityCop sees a timeout only when it runs: run it at least four times per
        # timeout so that an idle connection closes within a quarter of it.
        freq = min(net_config.inactivity_check_frequency, max(0.05, timeout / 4))
        net_config.set(_CHECK_FREQUENCY, freq)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the chosen service; returns the exit status."""
    try:
        settings = parse_args(argv)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s",
            stream=sys.stderr,
        )
        configure_records(settings)
        if settings.upstream is not None:
            try:  # check now, before any worker starts: one error line, not one per worker
                start_name_resolution(settings.upstream[0], start=False)
            except ValueError as exc:
                raise UsageError(f"--upstream: {exc}") from None
        # Made here, once, before any worker is forked: the workers share them (and so
        # the random ticket keys made when there is no ticket key file).
        tls = command_tls(settings)
        if settings.workers > 1:
            from ats_cffi.apps.workers import run_workers

            return run_workers(settings, tls)
        return serve(settings, tls=tls)
    except CommandError as exc:
        return report_error(exc)


__all__ = ["SERVICES", "build_parser", "main", "parse_args", "parse_hostport"]
