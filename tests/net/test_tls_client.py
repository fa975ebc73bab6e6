"""SSLNetVConnection, client side (``connect_re`` with ``NetVCOptions.tls``), against
``openssl s_server`` as the TLS server: verification, SNI and the session cache."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ats_cffi.eventsystem import Continuation, MIOBuffer, ProxyMutex
from ats_cffi.eventsystem.codes import VC_EVENT_EOS, VC_EVENT_ERROR, VC_EVENT_READ_READY
from ats_cffi.net import NetVCOptions, net_stats
from ats_cffi.net.codes import NET_EVENT_OPEN
from ats_cffi.net.stats import tls_stats
from ats_cffi.net.tls import ClientContext, tls_config

from .conftest import OPEN, wait_until
from .tls_certs import TestCA

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
REQUEST = b"GET / HTTP/1.0\r\n\r\n"


@pytest.fixture
def s_server(ca: TestCA) -> Iterator[int]:
    """``openssl s_server -www`` on 127.0.0.1 with a certificate for localhost: its port."""
    leaf = ca.leaf("localhost", "localhost")
    argv = [OPENSSL, "s_server", "-accept", "127.0.0.1:0", "-cert", str(leaf.cert),
            "-key", str(leaf.key), "-www", "-naccept", "20"]  # fmt: skip
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert p.stdout is not None
        for line in p.stdout:
            m = re.match(rb"ACCEPT 127\.0\.0\.1:(\d+)", line)
            if m:
                break
        else:
            pytest.fail("openssl s_server did not start")
        yield int(m[1])
    finally:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


class Fetch(Continuation):
    """Opens a connection, sends ``REQUEST``, reads until EOS or ERROR: ``body``, ``end``."""

    def __init__(self) -> None:
        super().__init__(ProxyMutex())
        self.buf = MIOBuffer(4096)
        self.reader = self.buf.alloc_reader()
        self.out = MIOBuffer(4096)
        self.body = bytearray()
        self.end: tuple[int, int] | None = None
        self.done = threading.Event()
        self.vc: Any = None
        self.set_handler(self.handle)

    def handle(self, event: int, data: Any) -> None:
        if event == NET_EVENT_OPEN:
            self.vc = data
            self.out.write(REQUEST)
            data.do_io_write(self, len(REQUEST), self.out.alloc_reader())
            data.do_io_read(self, 1 << 20, self.buf)
            return
        if event == VC_EVENT_READ_READY:
            self.body += self.reader.read()
            data.reenable()
        elif event in (VC_EVENT_EOS, VC_EVENT_ERROR):
            self.body += self.reader.read()
            self.end = (event, self.vc.lerrno)
            self.vc.do_io_close()
            self.done.set()


def fetch(net: Any, port: int, ctx: ClientContext, sni: str | None = "localhost") -> Fetch:
    f = Fetch()
    net.connect_re(f, ("127.0.0.1", port), NetVCOptions(tls=ctx, sni_servername=sni))
    assert f.done.wait(10)
    return f


def test_a_verified_connection_to_openssl_s_server_and_a_resumed_second_one(
    net, ca, s_server
) -> None:
    ctx = ClientContext(str(ca.pem))
    first = fetch(net, s_server, ctx)
    assert first.end == (VC_EVENT_EOS, 0)
    assert first.body.startswith(b"HTTP/1.0 200 ok")
    assert b"TLSv1.3" in first.body
    # The session is kept when the first VC is freed, on its net thread, just after the
    # handler that closed it returned.
    assert wait_until(lambda: ctx.sessions_kept() == 1)
    second = fetch(net, s_server, ctx)
    assert second.end == (VC_EVENT_EOS, 0)
    snap = tls_stats.snapshot()
    assert snap["proxy.process.ssl.total_success_handshake_count_out"] == 2
    assert snap["proxy.process.ssl.origin_session_reused"] == 1
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


@pytest.mark.parametrize("why", ["unknown_ca", "wrong_name"])
def test_a_server_that_cannot_be_verified_is_an_error(net, ca, s_server, tmp_path, why) -> None:
    if why == "unknown_ca":
        other = TestCA(tmp_path, cn="another CA")
        ctx, sni = ClientContext(str(other.pem)), "localhost"
    else:
        ctx, sni = ClientContext(str(ca.pem)), "elsewhere.test"
    f = fetch(net, s_server, ctx, sni)
    assert f.end is not None and f.end[0] == VC_EVENT_ERROR
    assert f.body == b""
    assert tls_stats.get("proxy.process.ssl.ssl_error_ssl") == 1
    assert wait_until(lambda: net_stats.get(OPEN) == 0)


def test_verification_disabled_by_the_policy_record(net, ca, s_server, tmp_path) -> None:
    tls_config.set("proxy.config.ssl.client.verify.server.policy", "DISABLED")
    other = TestCA(tmp_path, cn="another CA")
    f = fetch(net, s_server, ClientContext(str(other.pem)))
    assert f.end == (VC_EVENT_EOS, 0) and f.body.startswith(b"HTTP/1.0 200 ok")


def test_connect_re_refuses_a_server_context_in_net_vc_options(net, ca) -> None:
    from ats_cffi.net.tls import ServerContext

    leaf = ca.leaf("localhost", "localhost")
    with pytest.raises(TypeError, match="NetVCOptions.tls must be a ClientContext"):
        net.connect_re(Fetch(), ("127.0.0.1", 1),
                       NetVCOptions(tls=ServerContext.from_files(leaf.cert, leaf.key)))  # fmt: skip
