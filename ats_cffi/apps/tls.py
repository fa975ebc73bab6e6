"""The command's TLS: the server context of a service's listener and the client context of
a tunnel's upstream (``ats_cffi.net.tls``).

- ``--tls-cert FILE --tls-key FILE``: one certificate for every name; ``--tls-config FILE``
  (the record ``proxy.config.ssl.server.multicert.filename``, which a records file may set
  too): ATS's ssl_multicert.config, the certificate chosen by the client's SNI. The
  listener's connections are then SSLNetVConnections; the ``--stats`` listener stays plain
  HTTP. The http service offers ALPN ``http/1.1``.
- ``tunnel --upstream-tls``: every upstream connection is TLS, its certificate verified
  (``proxy.config.ssl.client.verify.server.policy``) against ``--upstream-ca`` or the
  system's CAs, for the upstream's host as given, which is also the SNI (a numeric address
  is verified as an address, with no SNI).
- A TLS connection is never spliced (the splice moves the socket's raw bytes): echo and
  tunnel move its bytes through VIOs, as with ``--vio``.

The contexts are made once, from the ``proxy.config.ssl.*`` records in force, before the
command forks its ``--workers``: without a ticket key file, the random ticket keys made
with the server context are the same in every worker, which resume each other's
sessions. On SIGHUP each worker re-reads its ticket key file (``reload_ticket_keys``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ats_cffi.net.tls import ClientContext, ServerContext, TLSConfigError, tls_config

log = logging.getLogger("ats.ssl")

#: ALPN protocols each service offers (none: no ALPN answer).
SERVICE_ALPN: dict[str, tuple[str, ...]] = {"http": ("http/1.1",)}


@dataclass(frozen=True)
class CommandTLS:
    """The contexts of one command: ``server`` for its service's listener (None: plain),
    ``upstream`` for a tunnel's upstream connections (None: plain)."""

    server: ServerContext | None = None
    upstream: ClientContext | None = None

    def reload_ticket_keys(self) -> None:
        """SIGHUP: read the ticket key file again (``proxy.config.ssl.server.ticket_key
        .filename``: its first key encrypts new tickets, every key decrypts). A file that
        cannot be read is logged and the keys in force are kept."""
        server = self.server
        if server is None or not server.config.session_ticket_enable:
            return
        path = server.config.ticket_key_filename
        if not path:
            return  # the random keys made with the context stay
        try:
            server.reload_ticket_keys()
        except TLSConfigError as exc:
            log.error("SIGHUP: %s; keeping the ticket keys in force", exc)
            return
        log.info("SIGHUP: reloaded the ticket keys of %s", path)


def make_tls(
    service: str,
    cert: str | None = None,
    key: str | None = None,
    upstream_tls: bool = False,
    upstream_ca: str | None = None,
) -> CommandTLS:
    """The contexts the options and the ``proxy.config.ssl.*`` records ask for (see the
    module doc). ``TLSConfigError`` naming the file for a certificate that does not load,
    a key that does not match it, a bad ssl_multicert.config, ticket key or CA file."""
    alpn = SERVICE_ALPN.get(service, ())
    server = None
    if cert is not None and key is not None:
        _check_readable("--tls-cert", cert)
        _check_readable("--tls-key", key)
        server = ServerContext.from_files(cert, key, alpn=alpn)
    elif tls_config.multicert_filename:
        path = tls_config.multicert_filename
        try:
            server = ServerContext.from_multicert(path, alpn=alpn)
        except TLSConfigError:
            raise
        except ValueError as exc:  # not UTF-8, an unclosed quote
            raise TLSConfigError(f"{path}: {exc}") from None
    if upstream_ca is not None:
        _check_readable("--upstream-ca", upstream_ca)
    upstream = ClientContext(upstream_ca) if upstream_tls else None
    return CommandTLS(server, upstream)


def _check_readable(option: str, path: str) -> None:
    """``TLSConfigError`` naming ``option`` and the reason when ``path`` cannot be opened
    (where OpenSSL would say only "system lib")."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TLSConfigError(f"{option} {path}: {exc.strerror or exc}") from None


__all__ = ["SERVICE_ALPN", "CommandTLS", "make_tls"]
