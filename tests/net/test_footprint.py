"""What an idle connection's objects take, compiled: the bytes the idle-memory rows of
``perf/compare_peers.py`` add up per connection (obmalloc rounds each object up to 16)."""

from __future__ import annotations

import sys

import pytest

from ats_cffi._pure import compiled
from ats_cffi.net.netvc import UnixNetVConnection

pytestmark = pytest.mark.skipif(not compiled(), reason="the compiled classes' layout")


def test_a_direction_state_takes_112_bytes_its_errno_a_byte() -> None:
    vc = UnixNetVConnection(None)
    for s in (vc.read, vc.write):
        assert sys.getsizeof(s) == 112  # 128 when pending_error took a word
    vc.read.pending_error = 133  # EHWPOISON, Linux's highest errno
    assert vc.read.pending_error == 133
    with pytest.raises(TypeError, match="u8"):  # refused, not wrapped
        vc.read.pending_error = 256
