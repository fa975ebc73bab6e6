"""ats_cffi: Apache Traffic Server's network I/O core in Python over a cffi epoll extension."""

from __future__ import annotations

__version__ = "0.1.0"
