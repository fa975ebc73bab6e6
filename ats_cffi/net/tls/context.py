"""TLS contexts: a server's certificates (one, or several chosen by SNI) and a client's
trust, over OpenSSL's SSL_CTX (``_native_tls.c``).

A context is made once (it reads the ``proxy.config.ssl.*`` records then) and shared by
every connection of a listener (``AcceptOptions.tls``) or of a client
(``NetVCOptions.tls``); each SSLNetVConnection takes its OpenSSL object from it
(``new_ssl``). Bad files are a ``TLSConfigError`` naming the file and what OpenSSL said.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ats_cffi._native import ffi, lib
from ats_cffi.net.tls.config import TLSConfig, tls_config

log = logging.getLogger("ats.ssl")

_ERRLEN = 512
#: Bytes of one session ticket key (``_native_tls.h``).
TICKET_KEY_LEN: int = lib.ATS_TLS_TICKET_KEY_LEN
#: The keys ssl_multicert.config lines may have (ATS's names); others are refused.
MULTICERT_KEYS = ("ssl_cert_name", "ssl_key_name", "dest_ip")


class TLSConfigError(ValueError):
    """A certificate, key, CA or ticket key file (or a record) that OpenSSL refused."""


def _versions(config: TLSConfig) -> tuple[int, int]:
    if not config.TLSv1_2 and not config.TLSv1_3:
        raise TLSConfigError("proxy.config.ssl.TLSv1_2 and TLSv1_3 are both 0: no protocol left")
    lo = lib.ATS_TLS_V1_2 if config.TLSv1_2 else lib.ATS_TLS_V1_3
    hi = lib.ATS_TLS_V1_3 if config.TLSv1_3 else lib.ATS_TLS_V1_2
    return lo, hi


def _alpn_wire(protocols: tuple[str, ...]) -> bytes:
    """ALPN's wire format behind a 2-byte length (what ``ats_tls_ctx_set_alpn`` takes)."""
    wire = b""
    for p in protocols:
        b = p.encode("ascii")
        if not 0 < len(b) < 256:
            raise TLSConfigError(f"ALPN protocol name must be 1..255 bytes: {p!r}")
        wire += bytes([len(b)]) + b
    return len(wire).to_bytes(2, "big") + wire


def _check(ok: int, err: Any) -> None:
    if ok < 0:
        raise TLSConfigError(ffi.string(err).decode(errors="replace"))


class TLSContext:
    """What a server's and a client's contexts share: the SSL_CTXs (freed with the
    context; the connections made from them hold their own references) and the buffers
    OpenSSL's callbacks read, kept alive here."""

    server = False

    def __init__(self, config: TLSConfig, alpn: tuple[str, ...]) -> None:
        self.config = config
        self.alpn = tuple(alpn)
        wire = _alpn_wire(self.alpn) if alpn else b""
        self._wire = ffi.new("unsigned char[]", wire) if alpn else None
        self._wire_len = len(wire) - 2
        self.ctx: Any = self._new_ctx()
        #: ``proxy.config.ssl.max_record_size``, read once per context.
        self.max_record_size: int = config.max_record_size

    def _new_ctx(self) -> Any:
        err = ffi.new("char[]", _ERRLEN)
        lo, hi = _versions(self.config)
        ctx = lib.ats_tls_ctx_new(self.server, lo, hi, err, _ERRLEN)
        if ctx == ffi.NULL:
            raise TLSConfigError(ffi.string(err).decode(errors="replace"))
        ctx = ffi.gc(ctx, lib.ats_tls_ctx_free)
        c = self.config
        if self.server:
            ciphers, suites = c.cipher_suite, c.tls13_cipher_suites
        else:
            ciphers, suites = c.client_cipher_suite, ""
        _check(lib.ats_tls_ctx_set_ciphers(
            ctx, ciphers.encode() if ciphers else ffi.NULL,
            suites.encode() if suites else ffi.NULL, err, _ERRLEN), err)  # fmt: skip
        if self._wire is not None and lib.ats_tls_ctx_set_alpn(
            ctx, self.server, self._wire, self._wire_len) < 0:  # fmt: skip
            raise TLSConfigError(f"ALPN protocols {self.alpn!r} refused by OpenSSL")
        return ctx


class ServerContext(TLSContext):
    """A server's certificates: ``from_files`` (one, the default) or ``from_multicert``
    (several, chosen by the ClientHello's SNI, ATS's ssl_multicert.config). ``alpn``: the
    protocols offered, in preference order (the command's http: ``("http/1.1",)``)."""

    server = True

    def __init__(self, config: TLSConfig = tls_config, alpn: tuple[str, ...] = ()) -> None:
        super().__init__(config, alpn)
        self.ctxs: list[Any] = []
        #: (host name or ``*.domain``, SSL_CTX) of every certificate, in file order.
        self.names: list[tuple[str, Any]] = []
        self.default: Any = None
        self._ticket_tables: list[Any] = []
        self._ticket_keys: Any = None
        self.handshake_timeout_in: float = config.handshake_timeout_in

    @classmethod
    def from_files(
        cls, cert: str | os.PathLike[str], key: str | os.PathLike[str], *,
        alpn: tuple[str, ...] = (), config: TLSConfig = tls_config,
    ) -> ServerContext:  # fmt: skip
        """One certificate chain (PEM, leaf first) and its private key, for every name."""
        self = cls(config, alpn)
        self._add(str(cert), str(key), default=True)
        self._finish()
        return self

    @classmethod
    def from_multicert(
        cls, path: str | os.PathLike[str], *, alpn: tuple[str, ...] = (),
        config: TLSConfig = tls_config,
    ) -> ServerContext:  # fmt: skip
        """The certificates of an ssl_multicert.config file: one line each, ``ssl_cert_name=``
        and ``ssl_key_name=`` (relative paths from the file's directory), ``dest_ip=*`` on
        the default one. A ClientHello's SNI picks the certificate whose names (its DNS
        subjectAltNames, else its common name; ``*.example.com`` covers one label) match;
        none matches: the default, or a refused handshake when there is none."""
        self = cls(config, alpn)
        p = Path(path)
        try:
            lines = p.read_text().splitlines()
        except OSError as exc:
            raise TLSConfigError(f"{path}: {exc.strerror}") from None
        for n, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields = _multicert_fields(line, f"{path}:{n}")
            cert = p.parent / fields["ssl_cert_name"]
            key = p.parent / fields.get("ssl_key_name", fields["ssl_cert_name"])
            self._add(str(cert), str(key), default=fields.get("dest_ip") == "*")
        if not self.ctxs:
            raise TLSConfigError(f"{path}: no certificate line")
        self._finish()
        return self

    def _add(self, cert: str, key: str, default: bool) -> None:
        err = ffi.new("char[]", _ERRLEN)
        ctx = self.ctx if not self.ctxs else self._new_ctx()
        if lib.ats_tls_ctx_load_cert(ctx, cert.encode(), key.encode(), err, _ERRLEN) < 0:
            raise TLSConfigError(f"{cert} / {key}: {ffi.string(err).decode(errors='replace')}")
        self.ctxs.append(ctx)
        out = ffi.new("char[]", 65536)
        n = lib.ats_tls_ctx_names(ctx, out, 65536)
        for name in ffi.unpack(out, max(n, 0)).decode(errors="replace").split():
            self.names.append((name.lower(), ctx))
        if default and self.default is None:
            self.default = ctx

    def _finish(self) -> None:
        """The SNI table and the ticket keys, on every SSL_CTX (the first one, which each
        connection starts from, unless the SNI names another)."""
        pairs = self.names
        names = [ffi.new("char[]", name.encode()) for name, _ in pairs]
        # The arrays are owned here (the table's fields only point at them).
        name_array = ffi.new("const char *[]", names) if names else ffi.NULL
        ctx_array = ffi.new("SSL_CTX *[]", [ctx for _, ctx in pairs]) if pairs else ffi.NULL
        table = ffi.new("ats_tls_sni *")
        table.n = len(pairs)
        table.names = name_array
        table.ctxs = ctx_array
        table.fallback = self.default if self.default is not None else ffi.NULL
        self._sni = (table, names, name_array, ctx_array)
        if self.default is not None and self.default is not self.ctx:
            self.ctxs.remove(self.default)
            self.ctxs.insert(0, self.default)
            self.ctx = self.default
        c = self.config
        for ctx in self.ctxs:
            if len(self.ctxs) > 1 or self.default is None:
                lib.ats_tls_ctx_set_sni(ctx, table)
            lib.ats_tls_ctx_set_num_tickets(
                ctx, c.session_ticket_number if c.session_ticket_enable else 0
            )
        if c.session_ticket_enable:
            self.reload_ticket_keys()

    def reload_ticket_keys(self) -> None:
        """Read ``proxy.config.ssl.server.ticket_key.filename`` again (its first key
        encrypts new tickets, every key decrypts: rotate by putting a new key first). With
        no file, random keys are made once, when the context is: processes forked after
        that resume each other's sessions."""
        path = self.config.ticket_key_filename
        if path:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise TLSConfigError(f"{path}: {exc.strerror}") from None
            if not data or len(data) % TICKET_KEY_LEN:
                raise TLSConfigError(
                    f"{path}: a ticket key file holds keys of {TICKET_KEY_LEN} bytes, "
                    f"not {len(data)} bytes"
                )
        elif self._ticket_keys is None:
            data = os.urandom(TICKET_KEY_LEN)
        else:
            return
        keys = ffi.new("unsigned char[]", data)
        table = ffi.new("ats_tls_ticket_keys *")
        table.n = len(data) // TICKET_KEY_LEN
        table.keys = keys
        # A handshake on another thread may still read the old table: each one made stays
        # alive with the context (a few per SIGHUP).
        self._ticket_tables.append((table, keys))
        self._ticket_keys = table
        for ctx in self.ctxs:
            if lib.ats_tls_ctx_set_ticket_keys(ctx, table) < 0:
                raise TLSConfigError("SSL_CTX_set_tlsext_ticket_key_evp_cb failed")

    def new_ssl(self, fd: int) -> Any:
        """A server-side OpenSSL object for the accepted socket ``fd`` (NULL on failure)."""
        return lib.ats_tls_new(self.ctx, fd, 1, ffi.NULL, ffi.NULL)


def _multicert_fields(line: str, where: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for token in shlex.split(line):
        key, sep, value = token.partition("=")
        if not sep or key not in MULTICERT_KEYS:
            raise TLSConfigError(f"{where}: unknown field {token!r} (known: {MULTICERT_KEYS})")
        fields[key] = value
    if "ssl_cert_name" not in fields:
        raise TLSConfigError(f"{where}: no ssl_cert_name")
    return fields


class ClientContext(TLSContext):
    """A client's trust: the server is verified (``proxy.config.ssl.client.verify.server
    .policy``, against ``cafile`` or ``client.CA.cert.filename`` or the system's CAs) by
    the name it was reached by, which goes in the SNI. Sessions are kept per server name
    and port, and resumed (``origin_session_cache``)."""

    def __init__(
        self, cafile: str | None = None, *, verify: bool | None = None,
        alpn: tuple[str, ...] = (), config: TLSConfig = tls_config,
    ) -> None:  # fmt: skip
        super().__init__(config, alpn)
        if verify is None:
            verify = config.verify_server_policy == "ENFORCED"
        ca = cafile or config.client_ca_filename or None
        err = ffi.new("char[]", _ERRLEN)
        if lib.ats_tls_ctx_set_verify(
            self.ctx, verify, ca.encode() if ca else ffi.NULL, err, _ERRLEN) < 0:  # fmt: skip
            raise TLSConfigError(f"{ca or 'CA'}: {ffi.string(err).decode(errors='replace')}")
        self.verify = verify
        self.cache_size = config.origin_session_cache_size if config.origin_session_cache else 0
        self._sessions: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def new_ssl(self, fd: int, host: str | None, key: Any) -> Any:
        """A client-side OpenSSL object for ``fd``, for ``host`` (SNI and the name verified;
        a numeric address is verified as one, without SNI), resuming the session kept for
        ``key`` if any."""
        session = ffi.NULL
        if self.cache_size:
            with self._lock:
                s = self._sessions.get(key)
            if s is not None:
                session = s
        return lib.ats_tls_new(self.ctx, fd, 0, host.encode() if host else ffi.NULL, session)

    def sessions_kept(self) -> int:
        """How many sessions the cache holds (at most ``origin_session_cache.size``)."""
        with self._lock:
            return len(self._sessions)

    def keep_session(self, key: Any, ssl: Any) -> None:
        """Keep the session of the connection ``ssl`` (ending now) for the next one to
        ``key``, if it can be resumed."""
        if not self.cache_size:
            return
        s = lib.ats_tls_get_session(ssl)
        if s == ffi.NULL:
            return
        s = ffi.gc(s, lib.ats_tls_session_free)
        with self._lock:
            self._sessions[key] = s
            self._sessions.move_to_end(key)
            while len(self._sessions) > self.cache_size:
                self._sessions.popitem(last=False)


def error_text(code: int) -> str:
    """OpenSSL's text of an error code (``ats_tls_last_error``)."""
    out = ffi.new("char[]", 256)
    lib.ats_tls_error_string(code, out, 256)
    return ffi.string(out).decode(errors="replace")


__all__ = ["ClientContext", "ServerContext", "TLSConfigError", "TLSContext", "error_text"]
