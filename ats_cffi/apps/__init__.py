"""Ready-made services on the public API: echo, an L4 tunnel, a small HTTP server with a
stats page, and the ``ats-cffi`` command that runs them (``ats_cffi.apps.cli``).

Each service is an accept continuation (:class:`ats_cffi.apps.service.Service`) that turns
every accepted ``UnixNetVConnection`` into a session continuation driving VIOs, as ATS's
session accept objects do.
"""

from __future__ import annotations
