"""What answers a lookup: the name itself or the hosts file, or a DNS answer, and the
HostEnt each makes.

Functions with no handler state. ``local_answer`` is what needs no question. For a DNS
answer, the DNSHandler finds the pending question its id belongs to (``handler.py``), then
asks here whether the answer is a response to it (``read_answer``) and what it means
(``addresses``, ``negative``, ``rcode_error``).
"""

from __future__ import annotations

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from ats_cffi.dns import stats as st
from ats_cffi.dns.codes import DNSError
from ats_cffi.dns.hostent import SOURCE_HOSTS, SOURCE_LITERAL, HostEnt
from ats_cffi.dns.resolv import HostsFile
from ats_cffi.sys import ip_family

_RCODE_ERRORS = {
    dns.rcode.SERVFAIL: DNSError.SERVFAIL,
    dns.rcode.REFUSED: DNSError.REFUSED,
    dns.rcode.FORMERR: DNSError.FORMERR,
    dns.rcode.NOTIMP: DNSError.NOTIMP,
}


def local_answer(name: str, families: tuple[int, ...], hosts: HostsFile) -> HostEnt | None:
    """The answer that needs no question, or None: ``name`` is an IP address (answered as
    itself, or NODATA when not of ``families``), or the hosts file lists it (in the first
    of ``families`` it has)."""
    lit = ip_family(name)
    if lit:
        if lit in families:
            return HostEnt(name, lit, (name,), 0, source=SOURCE_LITERAL)
        return HostEnt.failure(name, families[0], DNSError.NODATA)
    for family in families:
        addrs = hosts.lookup(name, family)
        if addrs:
            return HostEnt(name, family, tuple(addrs), 0, source=SOURCE_HOSTS)
    return None


def rcode_error(rcode: int) -> DNSError:
    """Why a try failed whose answer carried ``rcode`` (neither NOERROR nor NXDOMAIN)."""
    return _RCODE_ERRORS.get(rcode, DNSError.BAD_ANSWER)


def read_answer(
    query: dns.message.Message, data: bytes
) -> tuple[dns.message.Message | None, int, str]:
    """``(message, 0, "")`` when ``data`` is a response to ``query`` (as sent, with the id
    ``data`` carries): QR set, the same opcode and the same question (dnspython's
    ``is_response``). Else ``(None, counter, why)``: the stat to count the drop under
    (``MALFORMED_ANSWERS``, ``WRONG_QUESTION_ANSWERS``) and why, for the log.

    A truncated answer may be cut mid-record: what its header and question say is read,
    so that it still answers the question (and the TCP retry gets it whole)."""
    try:
        msg = dns.message.from_wire(data)
    except Exception as exc:  # dnspython raises many kinds for garbage
        truncated = _truncated_message(data)
        if truncated is None or not _is_response(query, truncated):
            return None, st.MALFORMED_ANSWERS, f"unparsable: {exc!r}"
        return truncated, 0, ""
    if not _is_response(query, msg):
        return None, st.WRONG_QUESTION_ANSWERS, "not an answer to the question sent"
    return msg, 0, ""


def addresses(name: str, family: int, msg: dns.message.Message) -> HostEnt:
    """The HostEnt of a NOERROR answer: the addresses at the end of its CNAME chain."""
    try:
        chain = msg.resolve_chaining()
    except dns.exception.DNSException:
        return HostEnt.failure(name, family, DNSError.BAD_ANSWER)
    if chain.answer is None or not len(chain.answer):
        return negative(name, family, msg, DNSError.NODATA, chain)
    addrs = tuple(rd.address for rd in chain.answer)  # type: ignore[attr-defined]
    aliases = tuple(rrset[0].target.to_text().rstrip(".").lower() for rrset in chain.cnames)
    return HostEnt(name, family, addrs, int(chain.minimum_ttl), aliases=aliases)


def negative(
    name: str,
    family: int,
    msg: dns.message.Message,
    error: DNSError,
    chain: dns.message.ChainingResult | None = None,
) -> HostEnt:
    """The HostEnt of a negative answer (NXDOMAIN, NODATA). Its TTL is the negative TTL
    (RFC 2308: the SOA's own TTL or its ``minimum``, whichever is smaller, and no more
    than the CNAME chain's), or 0 without an SOA in the authority section: such an
    answer is not to be cached."""
    ttl = 0
    if any(rrset.rdtype == dns.rdatatype.SOA for rrset in msg.authority):
        if chain is None:
            try:
                chain = msg.resolve_chaining()
            except dns.exception.DNSException:
                chain = None
        if chain is not None:
            ttl = max(0, int(chain.minimum_ttl))
    return HostEnt.failure(name, family, error, ttl)


def _truncated_message(data: bytes) -> dns.message.Message | None:
    """What can be read of a message that does not parse whole, if its TC bit is set."""
    if not data[2] & 0x02:  # TC is bit 9 of the flags, the second bit of byte 2
        return None
    try:
        dns.message.from_wire(data, raise_on_truncation=True)
    except dns.message.Truncated as exc:
        return exc.message()
    except Exception:
        return None
    return None


def _is_response(query: dns.message.Message, msg: dns.message.Message) -> bool:
    try:
        return query.is_response(msg)
    except Exception:
        return False
