"""TLS in the net core (ATS's SSLNetVConnection, DESIGN.md section 13).

- ``ServerContext.from_files(cert, key)`` / ``ServerContext.from_multicert(path)``: a
  server's certificates, given to a listener as ``AcceptOptions(tls=...)``;
- ``ClientContext(cafile)``: a client's trust, given to ``connect_re`` as
  ``NetVCOptions(tls=..., sni_servername=...)``;
- ``SSLNetVConnection``: the VC both make; ``tls_config``: the ``proxy.config.ssl.*``
  records; the ``proxy.process.ssl.*`` stats are ``ats_cffi.net.stats.tls_stats``.
"""

from ats_cffi.net.tls.config import TLSConfig, tls_config
from ats_cffi.net.tls.context import ClientContext, ServerContext, TLSConfigError, TLSContext
from ats_cffi.net.tls.sslvc import SSLNetVConnection

__all__ = [
    "ClientContext",
    "SSLNetVConnection",
    "ServerContext",
    "TLSConfig",
    "TLSConfigError",
    "TLSContext",
    "tls_config",
]
