"""The http service's records: ATS's HTTP timeouts, with their defaults (``--config``;
``--inactivity-timeout`` wins over the first), read when its services start."""

from __future__ import annotations

from typing import Final

from ats_cffi.net.config import NetConfig, Record

#: Seconds a connection may go without traffic when no other inactivity timeout is given
#: (``--inactivity-timeout``): ATS's ``proxy.config.http.keep_alive_no_activity_timeout_in``
#: default. Without it, idle or stalled clients would hold their connections for a day
#: (``proxy.config.net.default_inactivity_timeout``), up to the connections throttle.
KEEP_ALIVE_TIMEOUT: Final = 120.0
#: Seconds a request in progress may go without a byte: ATS's
#: ``proxy.config.http.transaction_no_activity_timeout_in`` default.
TRANSACTION_NO_ACTIVITY_TIMEOUT: Final = 30.0
#: Seconds a request may take from the read where it began to its last byte: ATS's
#: ``proxy.config.http.transaction_active_timeout_in`` default.
TRANSACTION_ACTIVE_TIMEOUT: Final = 900.0

#: The command's HTTP records (``--config``; ``--inactivity-timeout`` wins over the first),
#: read when its services start.
HTTP_RECORDS: tuple[Record, ...] = (
    Record("proxy.config.http.keep_alive_no_activity_timeout_in",
           "keep_alive_no_activity_timeout_in", KEEP_ALIVE_TIMEOUT, float, 0,
           "seconds a connection may stay idle between requests (0: none)"),
    Record("proxy.config.http.transaction_no_activity_timeout_in",
           "transaction_no_activity_timeout_in", TRANSACTION_NO_ACTIVITY_TIMEOUT, float, 0,
           "seconds a request in progress may go without a byte (0: none)"),
    Record("proxy.config.http.transaction_active_timeout_in",
           "transaction_active_timeout_in", TRANSACTION_ACTIVE_TIMEOUT, float, 0,
           "seconds a request may take in all (0: none)"),
)  # fmt: skip


class HttpConfig(NetConfig):
    """The live values of ``HTTP_RECORDS`` (checked as the net records are)."""

    records = HTTP_RECORDS


http_config: Final = HttpConfig()

__all__ = [
    "HTTP_RECORDS",
    "KEEP_ALIVE_TIMEOUT",
    "TRANSACTION_ACTIVE_TIMEOUT",
    "TRANSACTION_NO_ACTIVITY_TIMEOUT",
    "HttpConfig",
    "http_config",
]
