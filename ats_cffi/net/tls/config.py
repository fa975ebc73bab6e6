"""Config records of TLS: ``proxy.config.ssl.*`` with ATS's names and defaults.

Read a record with ``tls_config.get(key)`` or as an attribute; change it with
``tls_config.set(key, value)``. A context (``context.py``) reads them when it is made; the
handshake timeout and the record size are read by each new connection.

Where ats_cffi differs from ATS, the record says so:

- ``server.multicert.filename`` defaults to none (ATS: ``ssl_multicert.config``): the
  command's ``--tls-cert``/``--tls-key`` make a one-certificate context without a file;
- ``client.verify.server.policy`` defaults to ``ENFORCED`` (ATS: ``PERMISSIVE``, which
  ats_cffi does not have): a client verifies its server unless told not to (``DISABLED``);
- ``handshake_timeout_in`` takes fractions of a second;
- ``server.ticket_key.filename``'s keys are read again by ``reload_ticket_keys`` (the
  command does it on SIGHUP), as ATS rotates them on a config reload.
"""

from __future__ import annotations

from typing import Any

from ats_cffi.net.config import RecordStore, TypedRecord, coerce_typed

#: ATS's default TLS 1.2 cipher list (``proxy.config.ssl.server.cipher_suite``).
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
)
#: ATS's default TLS 1.3 suites (``proxy.config.ssl.server.TLSv1_3.cipher_suites``).
DEFAULT_TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
#: The largest record plaintext (``max_record_size``'s bound).
MAX_RECORD = 16383
#: Verification policies of ``client.verify.server.policy``.
VERIFY_POLICIES = ("ENFORCED", "DISABLED")

Record = TypedRecord
RECORDS: tuple[Record, ...] = (
    Record("proxy.config.ssl.TLSv1_2", "TLSv1_2", 1, "int", 0, 1, "1: offer TLS 1.2"),
    Record("proxy.config.ssl.TLSv1_3", "TLSv1_3", 1, "int", 0, 1, "1: offer TLS 1.3"),
    Record("proxy.config.ssl.server.cipher_suite", "cipher_suite", DEFAULT_CIPHERS, "str", 0, 0,
           "TLS 1.2 ciphers of servers (OpenSSL's list syntax)"),
    Record("proxy.config.ssl.server.TLSv1_3.cipher_suites", "tls13_cipher_suites",
           DEFAULT_TLS13_SUITES, "str", 0, 0, "TLS 1.3 suites of servers"),
    Record("proxy.config.ssl.client.cipher_suite", "client_cipher_suite", "", "str", 0, 0,
           "TLS 1.2 ciphers of clients (empty: OpenSSL's defaults)"),
    Record("proxy.config.ssl.server.multicert.filename", "multicert_filename", "", "str", 0, 0,
           "the certificates by SNI, ssl_multicert.config's format (empty: none)"),
    Record("proxy.config.ssl.server.ticket_key.filename", "ticket_key_filename", "", "str", 0, 0,
           "session ticket keys, 48 bytes each, the first one current (empty: random keys "
           "made when the context is, shared by the processes forked after it)"),
    Record("proxy.config.ssl.server.session_ticket.enable", "session_ticket_enable", 1, "int",
           0, 1, "1: resume sessions by tickets"),
    Record("proxy.config.ssl.server.session_ticket.number", "session_ticket_number", 2, "int",
           0, 16, "tickets sent after a TLS 1.3 handshake"),
    Record("proxy.config.ssl.handshake_timeout_in", "handshake_timeout_in", 0.0, "float", 0,
           86400.0, "s; an inbound handshake not done by then is closed (0: none)"),
    Record("proxy.config.ssl.max_record_size", "max_record_size", 0, "int", -1, MAX_RECORD,
           "record plaintext size: 0 the largest, -1 dynamic (small records until 1 MB was "
           "sent and after 1 s idle, the largest otherwise), else that many bytes"),
    Record("proxy.config.ssl.client.verify.server.policy", "verify_server_policy", "ENFORCED",
           "str", 0, 0, "ENFORCED: a client refuses a server it cannot verify; DISABLED"),
    Record("proxy.config.ssl.client.CA.cert.filename", "client_ca_filename", "", "str", 0, 0,
           "CA certificates a client verifies with (empty: the system's)"),
    Record("proxy.config.ssl.origin_session_cache", "origin_session_cache", 1, "int", 0, 1,
           "1: a client resumes its sessions with a server"),
    Record("proxy.config.ssl.origin_session_cache.size", "origin_session_cache_size", 10240,
           "int", 0, 1 << 20, "sessions a client context keeps (oldest dropped first)"),
)  # fmt: skip


class TLSConfig(RecordStore):
    """The live values of the TLS records."""

    records = RECORDS

    def _coerce(self, r: Record, value: Any) -> Any:
        v = coerce_typed(r, value)
        if r.attr == "verify_server_policy" and v not in VERIFY_POLICIES:
            raise ValueError(f"{r.key}: expected one of {', '.join(VERIFY_POLICIES)}, got {v!r}")
        return v


tls_config = TLSConfig()
