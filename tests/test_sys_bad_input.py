"""ats_cffi.sys on bad input (DESIGN.md section 10): a read never writes into immutable
memory, a host is never cut short at a NUL, and an out-of-range or wrongly typed argument
raises ``ValueError``/``TypeError`` naming the call and the argument, not cffi's bare
``OverflowError``/``TypeError``. Real fds on 127.0.0.1 only; no fd is left open."""

from __future__ import annotations

import os

import pytest

from ats_cffi import sys as s
from ats_cffi._native import ffi, lib

HUGE = 2**40  # fits no C int


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def tcp_fd():
    """An unconnected non-blocking AF_INET stream socket fd."""
    fd = s.socket(lib.AF_INET, lib.SOCK_STREAM)
    yield fd
    s.close(fd)


# ------------------------------------------------------- reads need writable memory


def test_read_fill_rejects_read_only_destinations_and_leaves_them_unchanged(pair) -> None:
    a, b = pair
    before = nfds()
    b.send(b"QRST")
    victim = bytes(bytearray(b"zzzz"))  # a fresh bytes object, not a cached constant
    readonly = [
        victim,
        memoryview(victim),
        memoryview(bytearray(b"zzzz")).toreadonly(),
    ]
    for base in readonly:
        with pytest.raises(TypeError, match="read: base must be .*writable") as info:
            s.read_fill(a.fileno(), base, 0, 4)
        assert "not bytes" in str(info.value) or "not memoryview" in str(info.value)
    assert victim == b"zzzz"
    # read_into already required a writable buffer: it still does.
    with pytest.raises(TypeError, match="read: buffer must be a writable"):
        s.read_into(a.fileno(), victim)
    assert victim == b"zzzz"
    assert a.recv(64) == b"QRST"  # the rejected calls consumed nothing
    # Writable destinations: cdata made once, or a writable bytes-like object.
    for dest in (
        ffi.new("char[]", 6),
        ffi.from_buffer(bytearray(6), require_writable=True),
        bytearray(6),
        memoryview(bytearray(6)),
    ):
        b.send(b"QRST")
        n, last = s.read_fill(a.fileno(), dest, 1, 4)
        assert n == 4 and last > 0  # filled
        got = bytes(ffi.buffer(dest)) if isinstance(dest, ffi.CData) else bytes(dest)
        assert got == b"\0QRST\0"
    # Writing may read from bytes: write_block takes them (and any bytes-like object).
    assert s.write_block(b.fileno(), b"hello", 1, 3)[0] == 3
    assert s.write_block(b.fileno(), bytearray(b"!"), 0, 1)[0] == 1
    assert a.recv(64) == b"ell!"
    with pytest.raises(TypeError, match="write: base must be"):
        s.write_block(b.fileno(), [1, 2], 0, 1)
    assert nfds() == before


# ---------------------------------------------------- hosts go to C as C strings


def test_host_with_a_nul_or_non_ascii_raises_value_error_and_connects_nowhere(
    listener, tcp_fd, tmp_path
) -> None:
    port = listener.getsockname()[1]
    before = nfds()
    for call in (s.connect, s.bind):
        name = call.__name__
        with pytest.raises(ValueError, match=f"^{name}: host must not contain a NUL"):
            call(tcp_fd, ("127.0.0.1\x00garbage", port))
        with pytest.raises(ValueError, match=f"^{name}: not a numeric address") as info:
            call(tcp_fd, ("12\u096d.0.0.1", port))
        assert not isinstance(info.value, UnicodeError)
    # Nothing reached the listener: the truncated "127.0.0.1" was not connected to.
    with pytest.raises(BlockingIOError):
        listener.accept()
    assert s.getsockname(tcp_fd) == ("0.0.0.0", 0)  # and nothing was bound
    # An AF_UNIX path is a C string too: no socket file is made at the truncated path.
    ufd = s.socket(lib.AF_UNIX, lib.SOCK_STREAM)
    try:
        with pytest.raises(ValueError, match="^bind: an AF_UNIX path must not contain a NUL"):
            s.bind(ufd, str(tmp_path / "sock\x00evil"))
    finally:
        s.close(ufd)
    assert os.listdir(tmp_path) == []
    assert nfds() == before
    # A good host still works.
    assert s.connect(tcp_fd, ("127.0.0.1", port)) in (0, s.IN_PROGRESS)


# ------------------------------------- out-of-range and wrongly typed int arguments


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        # Out of the C int (or uint32_t) range: ValueError, not cffi's OverflowError.
        (
            lambda fd: s.setsockopt_int(fd, lib.SOL_SOCKET, lib.SO_RCVBUF, HUGE),
            ValueError,
            r"^setsockopt: value must be in",
        ),
        (
            lambda fd: s.setsockopt_linger(fd, True, HUGE),
            ValueError,
            r"^setsockopt\(SO_LINGER\): seconds must be in 0\.\.",
        ),
        (lambda fd: s.listen(fd, HUGE), ValueError, r"^listen: backlog must be in"),
        (lambda fd: s.socket(HUGE), ValueError, r"^socket: family must be in"),
        (lambda fd: s.close(HUGE), ValueError, r"^close: fd must be in"),
        (lambda fd: s.so_error(HUGE), ValueError, r"^getsockopt\(SO_ERROR\): fd must be in"),
        (lambda fd: s.shutdown(fd, HUGE), ValueError, r"^shutdown: how must be in"),
        (lambda fd: s.read_into(HUGE, bytearray(4)), ValueError, r"^read: fd must be in"),
        (lambda fd: s.write(HUGE, b"x"), ValueError, r"^write: fd must be in"),
        (lambda fd: s.accept4(fd, HUGE), ValueError, r"^accept4: flags must be in"),
        # Wrong types: TypeError naming the call and the argument.
        (lambda fd: s.so_error("3"), TypeError, r"^getsockopt\(SO_ERROR\): fd must be an int"),
        (lambda fd: s.shutdown(fd, "x"), TypeError, r"^shutdown: how must be an int"),
        (
            lambda fd: s.getsockopt_int(fd, "x", lib.SO_TYPE),
            TypeError,
            r"^getsockopt: level must be an int",
        ),
        (
            lambda fd: s.setsockopt_int(fd, "x", lib.SO_RCVBUF, 1),
            TypeError,
            r"^setsockopt: level must be an int",
        ),
        (
            lambda fd: s.read_fill("3", ffi.new("char[]", 4), 0, 4),
            TypeError,
            r"^read: fd must be an int",
        ),
        (
            lambda fd: s.write_block("3", ffi.new("char[]", 4), 0, 4),
            TypeError,
            r"^write: fd must be an int",
        ),
        (
            lambda fd: s.read_fill(HUGE, ffi.new("char[]", 4), 0, 4),
            ValueError,
            r"^read: fd must be in",
        ),
        (lambda fd: s.writev(fd, None), TypeError, r"^writev: buffers must be a sequence"),
        (
            lambda fd: s.writev(fd, (b for b in [b"x"])),
            TypeError,
            r"^writev: buffers must be a sequence",
        ),
    ],
    ids=[
        "setsockopt_int-value",
        "setsockopt_linger-seconds",
        "listen-backlog",
        "socket-family",
        "close-fd",
        "so_error-fd",
        "shutdown-how",
        "read_into-fd",
        "write-fd",
        "accept4-flags",
        "so_error-fd-str",
        "shutdown-how-str",
        "getsockopt_int-level-str",
        "setsockopt_int-level-str",
        "read_fill-fd-str",
        "write_block-fd-str",
        "read_fill-fd",
        "writev-None",
        "writev-generator",
    ],
)
def test_bad_int_arguments_raise_errors_naming_the_call_and_argument(
    tcp_fd, call, exc: type[Exception], match: str
) -> None:
    before = nfds()
    with pytest.raises(exc, match=match) as info:
        call(tcp_fd)
    assert type(info.value) is exc  # not OverflowError, not a UnicodeError
    assert nfds() == before


@pytest.mark.parametrize(
    ("address", "exc", "match"),
    [
        (("::1", 0, HUGE, 0), ValueError, r"flow must be in 0\.\.4294967295"),
        (("::1", 0, 0, -1), ValueError, r"scope must be in 0\.\.4294967295"),
        (("::1", 0, "x", 0), TypeError, r"flow must be an int, not str"),
        (("::1", 0, 0, 1.5), TypeError, r"scope must be an int, not float"),
    ],
    ids=["flow-huge", "scope-negative", "flow-str", "scope-float"],
)
def test_bad_ipv6_flow_and_scope_raise_errors_naming_the_call(
    address, exc: type[Exception], match: str
) -> None:
    try:
        fd = s.socket(lib.AF_INET6, lib.SOCK_STREAM)
    except OSError:
        pytest.skip("no IPv6 sockets here")
    before = nfds()
    try:
        for call in (s.bind, s.connect):
            with pytest.raises(exc, match=f"^{call.__name__}: {match}") as info:
                call(fd, address)
            assert type(info.value) is exc
    finally:
        s.close(fd)
    assert nfds() == before - 1
