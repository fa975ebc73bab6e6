"""The per-thread C buffers the sys calls pass to the helpers (sockaddrs, out-parameters),
made once per thread: the calls release the GIL, so threads cannot share them."""

from __future__ import annotations

import threading

from ats_cffi._native import ffi, lib

#: Most connections one ``accept_batch`` call takes (the length of its fd array): C's
#: ``ATS_ACCEPT_BATCH_MAX``, which ``_fastio.accept_batch`` checks too.
ACCEPT_BATCH_MAX: int = lib.ATS_ACCEPT_BATCH_MAX
#: Room for a numeric host (or an ``AF_UNIX`` path) that ``ats_sockaddr_parse`` writes.
HOST_LEN = 128


class Scratch(threading.local):
    """One thread's buffers (``scratch``'s attributes, made on the thread's first use)."""

    def __init__(self) -> None:
        self.ss = ffi.new("struct sockaddr_storage *")
        self.len = ffi.new("socklen_t *")
        self.host = ffi.new("char[]", HOST_LEN)
        self.port = ffi.new("int *")
        self.flow = ffi.new("uint32_t *")
        self.scope = ffi.new("uint32_t *")
        self.intval = ffi.new("int *")
        self.fds = ffi.new("int[]", ACCEPT_BATCH_MAX)
        self.opt_errs = ffi.new("int[]", ACCEPT_BATCH_MAX)
        self.opt_failed = ffi.new("int *")
        self.err = ffi.new("int *")
        self.last = ffi.new("ssize_t *")


scratch = Scratch()
