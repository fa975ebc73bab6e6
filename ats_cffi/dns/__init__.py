"""ATS iocore/dns: name resolution on the net threads' event loops (DESIGN.md section 8).

``dns_processor.start()`` (after ``net_processor.start()``) puts a DNSHandler on every net
thread; ``dns_processor.gethostbyname(cont, name, family)`` answers ``cont`` with
``DNS_EVENT_LOOKUP`` and a HostEnt; ``net_processor.connect_re``/``connect_s`` then accept
host names. Packets are built and parsed with dnspython.
"""

from ats_cffi.dns.cache import HostCache
from ats_cffi.dns.codes import DNS_EVENT_LOOKUP, DNSConnMode, DNSError, DNSEventCode
from ats_cffi.dns.config import DNSConfig, dns_config, parse_nameservers
from ats_cffi.dns.connection import DNSConnection
from ats_cffi.dns.entry import DNSEntry, DNSLookup
from ats_cffi.dns.handler import DNSHandler
from ats_cffi.dns.hostent import HostEnt
from ats_cffi.dns.processor import ConnectByNameAction, DNSProcessor, dns_processor
from ats_cffi.dns.resolv import HostsFile, parse_resolv_conf, read_resolv_conf
from ats_cffi.dns.stats import DNSStats, dns_stats

__all__ = [
    "DNS_EVENT_LOOKUP", "ConnectByNameAction", "DNSConfig", "DNSConnMode", "DNSConnection",
    "DNSEntry", "DNSError", "DNSEventCode", "DNSHandler", "DNSLookup", "DNSProcessor",
    "DNSStats", "HostCache", "HostEnt", "HostsFile", "dns_config", "dns_processor", "dns_stats",
    "parse_nameservers", "parse_resolv_conf", "read_resolv_conf",
]  # fmt: skip
