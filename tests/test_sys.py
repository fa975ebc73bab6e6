"""ats_cffi.sys on real kernel objects: epoll edge semantics, eventfd, accept4, I/O, errors."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

import pytest

from ats_cffi import sys as s
from ats_cffi._native import ffi, lib

ET_RW = lib.EPOLLIN | lib.EPOLLOUT | lib.EPOLLET


@pytest.fixture
def ep():
    with s.Epoll(16) as e:
        yield e


def events_of(ep: s.Epoll, timeout_ms: int = 0) -> dict[int, int]:
    n = ep.wait(timeout_ms)
    return {ep.tokens[i]: ep.masks[i] for i in range(n)}


# ------------------------------------------------------------------ epoll edges


def test_edge_triggered_socket_is_reported_once_until_new_data_arrives(ep, pair) -> None:
    a, b = pair
    ep.add(a.fileno(), lib.EPOLLIN | lib.EPOLLET, token=5)
    assert events_of(ep) == {}
    b.send(b"one")
    first = events_of(ep, 1000)
    assert first.keys() == {5} and first[5] & lib.EPOLLIN
    # The bytes are still unread, but the edge was reported: no second report.
    assert events_of(ep) == {}
    assert events_of(ep, 20) == {}
    b.send(b"two")
    assert events_of(ep, 1000).keys() == {5}
    assert a.recv(100) == b"onetwo"


def test_ctl_mod_with_the_same_mask_rearms_a_pending_edge(ep, pair) -> None:
    a, b = pair
    ep.add(a.fileno(), lib.EPOLLIN | lib.EPOLLET, token=9)
    b.send(b"pending")
    assert events_of(ep, 1000).keys() == {9}
    assert events_of(ep) == {}
    ep.modify(a.fileno(), lib.EPOLLIN | lib.EPOLLET, token=9)
    again = events_of(ep)
    assert again.keys() == {9} and again[9] & lib.EPOLLIN
    assert events_of(ep) == {}


def test_tokens_are_full_64_bit_values(ep, pair) -> None:
    a, b = pair
    token = (1 << 63) | 12345
    ep.add(a.fileno(), lib.EPOLLIN | lib.EPOLLET, token=token)
    b.send(b"x")
    assert events_of(ep, 1000) == {token: lib.EPOLLIN}


def test_delete_stops_reports(ep, pair) -> None:
    a, b = pair
    ep.add(a.fileno(), lib.EPOLLIN)
    ep.delete(a.fileno())
    b.send(b"x")
    assert events_of(ep, 20) == {}


def test_reset_peer_reports_hup_and_err(ep, listener) -> None:
    client = socket.create_connection(listener.getsockname())
    accepted = s.accept4(listener.fileno())
    assert accepted is not None
    fd, _ = accepted
    try:
        ep.add(fd, ET_RW | lib.EPOLLRDHUP, token=fd)
        events_of(ep)  # the initial writable edge
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # linger 0: the close sends RST
        mask = events_of(ep, 1000)[fd]
        assert mask & lib.EPOLLHUP
        assert mask & lib.EPOLLERR
        assert s.so_error(fd) == errno.ECONNRESET
    finally:
        s.close(fd)


def test_epoll_is_close_on_exec_and_close_is_idempotent() -> None:
    e = s.Epoll(1)
    assert fcntl.fcntl(e.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    e.close()
    e.close()
    assert e.closed and e.fd == -1


# -------------------------------------------------------------------- eventfd


def test_eventfd_counter_sums_writes_and_read_resets_it() -> None:
    with s.EventFD() as efd:
        assert efd.read() is None  # empty: EAGAIN is a return value
        efd.write(1)
        efd.write(41)
        assert efd.read() == 42
        assert efd.read() is None
        flags = fcntl.fcntl(efd.fd, fcntl.F_GETFL)
        assert flags & os.O_NONBLOCK
        assert fcntl.fcntl(efd.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_eventfd_semaphore_mode_reads_one_at_a_time() -> None:
    with s.EventFD(initval=3, semaphore=True) as efd:
        assert [efd.read() for _ in range(4)] == [1, 1, 1, None]


def test_eventfd_wakes_an_epoll_waiter(ep) -> None:
    with s.EventFD() as efd:
        ep.add(efd.fd, lib.EPOLLIN | lib.EPOLLET, token=1)
        assert events_of(ep) == {}
        efd.write()
        assert events_of(ep, 1000) == {1: lib.EPOLLIN}


def test_eventfd_full_counter_write_returns_false() -> None:
    with s.EventFD() as efd:
        assert efd.write(0xFFFFFFFFFFFFFFFE)
        assert efd.write(1) is False
        assert efd.read() == 0xFFFFFFFFFFFFFFFE


# --------------------------------------------------------------------- accept


def test_accept4_sets_nonblock_and_cloexec(listener) -> None:
    client = socket.create_connection(listener.getsockname())
    try:
        accepted = s.accept4(listener.fileno())
        assert accepted is not None
        fd, address = accepted
        try:
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert address == client.getsockname()
            assert s.getpeername(fd) == client.getsockname()
            assert s.getsockname(fd) == listener.getsockname()
        finally:
            s.close(fd)
    finally:
        client.close()


def test_accept4_returns_none_on_an_empty_backlog(listener) -> None:
    assert s.accept4(listener.fileno()) is None


def test_accept_batch_takes_the_whole_backlog_in_one_call(listener) -> None:
    clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]
    try:
        fds, err = s.accept_batch(listener.fileno(), 64)
        assert len(fds) == 5 and err == errno.EAGAIN
        for fd in fds:
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
            s.close(fd)
    finally:
        for c in clients:
            c.close()


def test_accept_batch_stops_at_max_count(listener) -> None:
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    try:
        fds, err = s.accept_batch(listener.fileno(), 2)
        assert len(fds) == 2 and err == 0
        rest, err = s.accept_batch(listener.fileno(), 2)
        assert len(rest) == 1 and err == errno.EAGAIN
        for fd in fds + rest:
            s.close(fd)
    finally:
        for c in clients:
            c.close()


def test_accept_batch_sets_tcp_nodelay_on_each_socket_when_asked(listener) -> None:
    clients = [socket.create_connection(listener.getsockname()) for _ in range(4)]
    try:
        failed: list[tuple[int, int]] = []
        fds, err = s.accept_batch(listener.fileno(), 2, s.ACCEPT_FLAGS, failed)
        plain, _ = s.accept_batch(listener.fileno(), 2)
        assert len(fds) == 2 and err == 0 and len(plain) == 2 and failed == []
        for fd in fds:
            assert s.getsockopt_int(fd, socket.IPPROTO_TCP, socket.TCP_NODELAY)
        for fd in plain:
            assert not s.getsockopt_int(fd, socket.IPPROTO_TCP, socket.TCP_NODELAY)
        for fd in fds + plain:
            s.close(fd)
    finally:
        for c in clients:
            c.close()


def test_accept_batch_returns_the_sockets_tcp_nodelay_failed_on_with_the_errno(tmp_path) -> None:
    ls = socket.socket(socket.AF_UNIX)
    path = str(tmp_path / "s")
    clients = []
    try:
        ls.bind(path)
        ls.listen()
        ls.setblocking(False)
        for _ in range(3):
            c = socket.socket(socket.AF_UNIX)
            c.connect(path)
            clients.append(c)
        failed: list[tuple[int, int]] = []
        fds, err = s.accept_batch(ls.fileno(), 8, s.ACCEPT_FLAGS, failed)
        assert len(fds) == 3 and err == errno.EAGAIN
        assert failed == [(fd, errno.EOPNOTSUPP) for fd in fds]  # served all the same
        for fd in fds:
            s.close(fd)
    finally:
        ls.close()
        for c in clients:
            c.close()


def test_ipv6_accept_gives_a_four_tuple() -> None:
    ls = socket.socket(socket.AF_INET6)
    try:
        ls.bind(("::1", 0))
        ls.listen()
        client = socket.create_connection(ls.getsockname()[:2])
        accepted = s.accept4(ls.fileno())
        assert accepted is not None
        fd, address = accepted
        s.close(fd)
        client.close()
        assert address[0] == "::1" and len(address) == 4
    finally:
        ls.close()


# ------------------------------------------------------------------ sockets


def test_socket_bind_listen_connect_through_sys() -> None:
    lfd = s.socket(lib.AF_INET, lib.SOCK_STREAM)
    cfd = s.socket(lib.AF_INET, lib.SOCK_STREAM)
    try:
        s.setsockopt_int(lfd, lib.SOL_SOCKET, lib.SO_REUSEADDR, 1)
        assert s.getsockopt_int(lfd, lib.SOL_SOCKET, lib.SO_REUSEADDR) == 1
        s.bind(lfd, ("127.0.0.1", 0))
        s.listen(lfd, 8)
        addr = s.getsockname(lfd)
        assert addr[0] == "127.0.0.1" and addr[1] > 0
        assert s.connect(cfd, addr) in (0, s.IN_PROGRESS)
        with s.Epoll(2) as e:
            e.add(cfd, lib.EPOLLOUT | lib.EPOLLET)
            assert e.wait(1000) == 1
        assert s.so_error(cfd) == 0
        accepted = s.accept4(lfd)
        assert accepted is not None
        s.close(accepted[0])
    finally:
        s.close(cfd)
        s.close(lfd)


def test_connect_to_a_closed_port_reports_econnrefused() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    fd = s.socket(lib.AF_INET, lib.SOCK_STREAM)
    try:
        r = s.connect(fd, ("127.0.0.1", port))
        assert r == s.IN_PROGRESS
        with s.Epoll(2) as e:
            e.add(fd, lib.EPOLLOUT | lib.EPOLLET)
            assert e.wait(1000) == 1
        assert s.so_error(fd) == errno.ECONNREFUSED
    except ConnectionRefusedError:
        pass
    finally:
        s.close(fd)


# ------------------------------------------------------------------------ I/O


def test_read_into_and_write_move_bytes_and_report_again(pair) -> None:
    a, b = pair
    buf = bytearray(16)
    assert s.read_into(a.fileno(), buf) == s.AGAIN
    assert s.write(b.fileno(), b"hello") == 5
    assert s.read_into(a.fileno(), buf, 3) == 3
    assert bytes(buf[:3]) == b"hel"
    assert s.read(a.fileno(), 10) == b"lo"
    assert s.read(a.fileno(), 10) == s.AGAIN
    b.shutdown(socket.SHUT_WR)
    assert s.read(a.fileno(), 10) == b""


def test_writev_gathers_buffers(pair) -> None:
    a, b = pair
    assert s.writev(b.fileno(), [b"ab", bytearray(b"cd"), memoryview(b"ef")]) == 6
    assert a.recv(10) == b"abcdef"
    assert s.writev(b.fileno(), []) == 0


def test_write_returns_again_when_the_socket_buffer_is_full(pair) -> None:
    a, b = pair
    chunk = b"x" * 65536
    total = 0
    for _ in range(1000):
        r = s.write(b.fileno(), chunk)
        if r == s.AGAIN:
            break
        total += r
    else:
        pytest.fail("the socket buffer never filled")
    assert total > 0


def test_read_fill_reads_until_again_into_a_preallocated_block(pair) -> None:
    a, b = pair
    block = bytearray(64)
    base = ffi.from_buffer(block)
    b.send(b"0123456789")
    n, last = s.read_fill(a.fileno(), base, 4, 60)
    assert (n, last) == (10, s.AGAIN)
    assert bytes(block[4:14]) == b"0123456789"
    b.send(b"x" * 100)
    n, last = s.read_fill(a.fileno(), base, 0, 64)
    assert n == 64 and last > 0  # filled: more may be waiting
    n, last = s.read_fill(a.fileno(), base, 0, 64)
    assert (n, last) == (36, s.AGAIN)
    b.close()
    assert s.read_fill(a.fileno(), base, 0, 64) == (0, 0)  # EOF


def test_read_spill_fills_the_block_then_the_spill_and_reports_again_and_eof(pair) -> None:
    a, b = pair
    block, spill = bytearray(8), bytearray(16)
    base, sp = ffi.from_buffer(block), ffi.from_buffer(spill)
    last = ffi.new("ssize_t *")
    fd = a.fileno()
    b.send(b"abcdefghijklmnopqrstu")  # 21 bytes: the block's last 3, then 16 in the spill
    assert lib.ats_read_spill(fd, base, 5, 3, sp, 16, 1, last) == 19
    assert last[0] == 19  # every byte asked for: more may be waiting
    assert bytes(block[5:]) == b"abc" and bytes(spill) == b"defghijklmnopqrs"
    assert lib.ats_read_spill(fd, base, 0, 8, sp, 16, 1, last) == 2  # short: stops there
    assert bytes(block[:2]) == b"tu" and last[0] == 2
    b.send(b"0123")
    assert lib.ats_read_spill(fd, base, 0, 2, sp, 0, 0, last) == 2  # no spill: a read
    assert lib.ats_read_spill(fd, base, 0, 1, sp, 16, 0, last) == 2  # on to EAGAIN
    assert last[0] == s.AGAIN and bytes(block[:1]) + bytes(spill[:1]) == b"23"
    b.close()
    assert lib.ats_read_spill(fd, base, 0, 8, sp, 16, 1, last) == 0
    assert last[0] == 0  # EOF


def test_write_block_and_writev_blocks_write_from_preallocated_memory(pair) -> None:
    a, b = pair
    blocks = [bytearray(b"__hello"), bytearray(b"world__")]
    ptrs = [ffi.from_buffer(x) for x in blocks]
    n, last = s.write_block(b.fileno(), ptrs[0], 2, 5)
    assert (n, last) == (5, last) and last > 0
    assert a.recv(10) == b"hello"
    bases = ffi.new("char *[]", 2)
    offs = ffi.new("size_t[]", 2)
    lens = ffi.new("size_t[]", 2)
    for i, (p, off, ln) in enumerate([(ptrs[0], 2, 5), (ptrs[1], 0, 5)]):
        bases[i], offs[i], lens[i] = p, off, ln
    n, last = s.writev_blocks(b.fileno(), bases, offs, lens, 2)
    assert n == 10 and last > 0
    assert a.recv(20) == b"helloworld"


def test_writev_blocks_stops_at_again_with_a_partial_count(pair) -> None:
    a, b = pair
    big = bytearray(4 << 20)
    base = ffi.from_buffer(big)
    bases = ffi.new("char *[]", [base])
    offs = ffi.new("size_t[]", [0])
    lens = ffi.new("size_t[]", [len(big)])
    n, last = s.writev_blocks(b.fileno(), bases, offs, lens, 1)
    assert 0 < n < len(big) and last == s.AGAIN


def test_write_to_a_reset_peer_raises_epipe_or_econnreset_not_sigpipe(pair) -> None:
    a, b = pair
    a.close()
    with pytest.raises(OSError) as info:
        for _ in range(3):
            s.write(b.fileno(), b"x")
    assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)
    assert "write" in str(info.value)


def test_send_some_returns_counts_and_errnos_as_values(pair) -> None:
    a, b = pair
    assert s.send_some(b.fileno(), b"bytes") == 5  # bytes: passed as they are
    assert s.send_some(b.fileno(), bytearray(b"arr")) == 3
    assert s.send_some(b.fileno(), memoryview(b"__view__")[2:6]) == 4
    assert a.recv(100) == b"bytesarrview"
    with pytest.raises(TypeError, match="send_some"):
        s.send_some(b.fileno(), "text")
    for _ in range(1000):  # fill the socket: -EAGAIN, no exception
        r = s.send_some(b.fileno(), b"x" * 65536)
        if r < 0:
            assert r == -errno.EAGAIN
            break
    else:
        pytest.fail("the socket buffer never filled")
    a.close()
    results = {s.send_some(b.fileno(), b"x") for _ in range(3)}
    assert results & {-errno.EPIPE, -errno.ECONNRESET}  # no SIGPIPE, no exception


def test_input_pending_peeks_without_consuming(pair) -> None:
    a, b = pair
    assert s.input_pending(a.fileno()) is False  # nothing sent yet: EAGAIN, no exception
    b.send(b"xyz")
    assert s.input_pending(a.fileno()) is True
    assert s.input_pending(a.fileno()) is True  # the peek took nothing
    assert a.recv(10) == b"xyz"
    assert s.input_pending(a.fileno()) is False
    b.close()
    assert s.input_pending(a.fileno()) is False  # EOF: nothing left to read


def test_input_pending_is_false_after_a_reset_and_types_are_checked(listener) -> None:
    client = socket.create_connection(listener.getsockname())
    accepted = s.accept4(listener.fileno())
    assert accepted is not None
    fd, _ = accepted
    try:
        client.send(b"q")  # loopback: delivered before send returns
        assert s.input_pending(fd) is True
        assert os.read(fd, 1) == b"q"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        assert s.input_pending(fd) is False  # ECONNRESET: nothing is left to read
        with pytest.raises(TypeError, match="^recv: fd must be an int, not str"):
            s.input_pending(str(fd))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="^recv: fd must be in"):
            s.input_pending(2**40)
    finally:
        s.close(fd)


# --------------------------------------------------------------- bad input


def closed_fd() -> int:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda fd: s.read_into(fd, bytearray(4)), "read"),
        (lambda fd: s.write(fd, b"x"), "write"),
        (lambda fd: s.writev(fd, [b"x"]), "writev"),
        (lambda fd: s.accept4(fd), "accept4"),
        (lambda fd: s.getsockname(fd), "getsockname"),
        (lambda fd: s.getpeername(fd), "getpeername"),
        (lambda fd: s.listen(fd), "listen"),
        (lambda fd: s.shutdown(fd, lib.SHUT_RDWR), "shutdown"),
        (lambda fd: s.close(fd), "close"),
        (lambda fd: s.so_error(fd), "SO_ERROR"),
        (lambda fd: s.getsockopt_int(fd, lib.SOL_SOCKET, lib.SO_TYPE), "getsockopt"),
        (lambda fd: s.read_fill(fd, ffi.from_buffer(bytearray(4)), 0, 4), "read"),
        (lambda fd: s.input_pending(fd), "recv"),
    ],
)
@pytest.mark.parametrize("fd_kind", ["closed", "invalid"])
def test_bad_fd_raises_ebadf_naming_the_call(call, name: str, fd_kind: str) -> None:
    fd = closed_fd() if fd_kind == "closed" else -1
    with pytest.raises(OSError) as info:
        call(fd)
    assert info.value.errno == errno.EBADF
    assert name in str(info.value)


def test_epoll_ctl_on_a_closed_fd_raises_ebadf(ep) -> None:
    with pytest.raises(OSError, match="epoll_ctl") as info:
        ep.add(closed_fd(), lib.EPOLLIN)
    assert info.value.errno == errno.EBADF


def test_eventfd_on_a_closed_descriptor_raises_ebadf() -> None:
    efd = s.EventFD()
    os.close(efd.fd)
    with pytest.raises(OSError, match="eventfd read") as info:
        efd.read()
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError, match="eventfd write"):
        efd.write(1)
    efd._fd = -1  # already closed by hand above


def test_epoll_wait_on_a_closed_epoll_raises_ebadf() -> None:
    e = s.Epoll(1)
    e.close()
    with pytest.raises(OSError, match="epoll_wait") as info:
        e.wait(0)
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: s.read_into("3", bytearray(4)), "read"),
        (lambda: s.read_into(0, b"immutable"), "read"),
        (lambda: s.read_into(0, 12), "read"),
        (lambda: s.write(1, "text, not bytes"), "write"),
        (lambda: s.writev(1, b"not a sequence of buffers"), "writev"),
        (lambda: s.writev(1, ["str"]), "writev"),
        (lambda: s.accept4("3"), "accept4"),
        (lambda: s.Epoll("8"), "Epoll"),
        (lambda: s.EventFD("1"), "eventfd"),
        (lambda: s.bind(1.5, ("127.0.0.1", 0)), "bind"),
        (lambda: s.close(None), "close"),
        (lambda: s.read(0, 2.0), "read"),
    ],
)
def test_wrong_types_raise_type_error_naming_the_call(call, name: str) -> None:
    with pytest.raises(TypeError, match=name):
        call()


def test_epoll_methods_reject_wrong_types(ep) -> None:
    with pytest.raises(TypeError, match="epoll_ctl"):
        ep.add("1", lib.EPOLLIN)
    with pytest.raises(TypeError, match="epoll_wait"):
        ep.wait("0")


@pytest.mark.parametrize("max_events", [0, -1])
def test_non_positive_max_events_raises_value_error(max_events: int) -> None:
    with pytest.raises(ValueError, match="max_events"):
        s.Epoll(max_events)


def test_negative_buffer_sizes_raise_value_error(pair) -> None:
    a, _ = pair
    with pytest.raises(ValueError, match="read: nbytes"):
        s.read(a.fileno(), -1)
    with pytest.raises(ValueError, match="read: nbytes"):
        s.read_into(a.fileno(), bytearray(4), -5)
    with pytest.raises(ValueError, match="accept4: max_count"):
        s.accept_batch(a.fileno(), 0)
    with pytest.raises(ValueError, match="eventfd write"):
        with s.EventFD() as efd:
            efd.write(0)


def test_bad_addresses_raise_clear_errors() -> None:
    fd = s.socket(lib.AF_INET, lib.SOCK_STREAM)
    try:
        with pytest.raises(ValueError, match="bind: not a numeric address"):
            s.bind(fd, ("not-an-ip", 0))
        with pytest.raises(ValueError, match="bind: port"):
            s.bind(fd, ("127.0.0.1", 70000))
        with pytest.raises(TypeError, match="bind: address"):
            s.bind(fd, "127.0.0.1:80")
    finally:
        s.close(fd)


def test_writev_blocks_writes_more_than_64_blocks(pair) -> None:
    a, b = pair
    blocks = [bytearray([i]) for i in range(100)]
    ptrs = [ffi.from_buffer(x) for x in blocks]
    bases = ffi.new("char *[]", ptrs)
    offs = ffi.new("size_t[]", [0] * 100)
    lens = ffi.new("size_t[]", [1] * 100)
    n, last = s.writev_blocks(b.fileno(), bases, offs, lens, 100)
    assert n == 100 and last > 0
    assert a.recv(200) == bytes(range(100))


def test_hot_path_calls_reject_spans_outside_the_buffer(pair) -> None:
    a, b = pair
    base = ffi.from_buffer(bytearray(8))
    with pytest.raises(ValueError, match="read: offset 4 \\+ length 8 exceeds"):
        s.read_fill(a.fileno(), base, 4, 8)
    with pytest.raises(ValueError, match="write: offset"):
        s.write_block(b.fileno(), base, 0, 9)
    with pytest.raises(ValueError, match="read: offset"):
        s.read_fill(a.fileno(), base, -1, 2)
    arr = ffi.new("size_t[]", 2)
    with pytest.raises(ValueError, match="writev: count"):
        s.writev_blocks(b.fileno(), ffi.new("char *[]", 2), arr, arr, 3)
    with pytest.raises(ValueError, match="writev: count"):
        s.writev_blocks(b.fileno(), ffi.new("char *[]", 2), arr, arr, -1)


def test_read_fill_returns_an_error_after_data_instead_of_losing_the_bytes(listener) -> None:
    client = socket.create_connection(listener.getsockname())
    accepted = s.accept4(listener.fileno())
    assert accepted is not None
    fd = accepted[0]
    try:
        client.sendall(b"data before the reset")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        block = bytearray(256)
        base = ffi.from_buffer(block)
        n, last = s.read_fill(fd, base, 0, 256)
        # Linux drops queued bytes on a reset; whatever was read comes with the error.
        if n:
            assert bytes(block[:n]) == b"data before the reset"[:n]
            assert last in (-errno.ECONNRESET, 0, s.AGAIN)
    except ConnectionResetError:
        pass
    finally:
        s.close(fd)
