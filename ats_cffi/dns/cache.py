"""HostCache: the process-wide cache of answers, bounded in size and by their TTL."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ats_cffi.dns.codes import DNSError
from ats_cffi.dns.hostent import SOURCE_CACHE, HostEnt

#: Failures that are answers about the name (RFC 2308 negative answers), cacheable with the
#: negative TTL of their SOA. Timeouts and server failures say nothing about it.
NEGATIVE_ERRORS = (DNSError.NXDOMAIN, DNSError.NODATA)

Clock = Callable[[], float]


class HostCache:
    """``(name, family)`` → the last ``HostEnt`` answered, least recently used first out.

    An answer stays ``min(its TTL, ttl_max)`` seconds; a TTL of 0 is not cached. Negative
    answers (NXDOMAIN, NODATA) are answers too: they stay for their SOA's negative TTL (RFC
    2308), and one without an SOA has TTL 0. Other failures (timeouts, server failures)
    are never cached. ``capacity`` 0 turns the cache off. Any thread may call it (one lock);
    ``clock`` is injectable so tests of expiry need not sleep.
    """

    def __init__(self, capacity: int, ttl_max: float, clock: Clock = time.monotonic) -> None:
        self.capacity = capacity
        self.ttl_max = ttl_max
        self.clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, int], tuple[float, HostEnt]] = OrderedDict()

    def get(self, name: str, family: int) -> HostEnt | None:
        """The cached answer with its remaining TTL, or None (absent or expired)."""
        key = (name, family)
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            expires, ent = item
            left = expires - self.clock()
            if left <= 0:
                del self._items[key]
                return None
            self._items.move_to_end(key)
        return ent.with_source(SOURCE_CACHE, max(1, math.ceil(left)))

    def put(self, ent: HostEnt) -> None:
        """Keep ``ent``, good or negative, for ``min(ent.ttl, ttl_max)`` seconds."""
        ttl = min(float(ent.ttl), self.ttl_max)
        if ttl <= 0 or self.capacity <= 0 or not (ent.good or ent.error in NEGATIVE_ERRORS):
            return
        key = (ent.name, ent.family)
        with self._lock:
            self._items[key] = (self.clock() + ttl, ent)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
