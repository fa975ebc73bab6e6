"""CPython's test.test_asyncio suites over the loop factory under test.

Each suite module combines a loop-agnostic mixin with a loop; on Linux the reference class is
the epoll one (``EPollEventLoopTests(UnixEventLoopTestsMixin, SubprocessTestsMixin,
test_utils.TestCase)`` with ``create_event_loop`` returning ``SelectorEventLoop(EpollSelector())``)
or a ``Selector*Tests`` class whose ``new_loop`` returns ``asyncio.SelectorEventLoop()``. The
case built here subclasses that reference class and overrides only the method that makes the
loop, so it runs exactly the reference class's tests on the factory's loop.
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass
from typing import Any

import cf_loop


@dataclass(frozen=True)
class CPythonCase:
    module: str  # in test.test_asyncio
    reference: str  # the class whose loop is replaced
    hook: str  # the method that makes the loop: create_event_loop, new_loop or setUp
    name: str  # the generated class's name


CASES: dict[str, CPythonCase] = {
    "events": CPythonCase(
        "test_events", "EPollEventLoopTests", "create_event_loop", "ATSEventLoopTests"
    ),
    "sock_lowlevel": CPythonCase(
        "test_sock_lowlevel", "EPollEventLoopTests", "create_event_loop", "ATSSockTests"
    ),
    "sendfile": CPythonCase(
        "test_sendfile", "EPollEventLoopTests", "create_event_loop", "ATSSendfileTests"
    ),
    "ssl": CPythonCase("test_ssl", "TestSSL", "new_loop", "ATSTestSSL"),
    "sslproto": CPythonCase(
        "test_sslproto", "SelectorStartTLSTests", "new_loop", "ATSStartTLSTests"
    ),
    "buffered_proto": CPythonCase(
        "test_buffered_proto", "BufferedProtocolSelectorTests", "new_loop", "ATSBufferedProtoTests"
    ),
    "server": CPythonCase(
        "test_server", "SelectorStartServerTests", "new_loop", "ATSStartServerTests"
    ),
    "streams": CPythonCase("test_streams", "StreamTests", "setUp", "ATSStreamTests"),
    "unix_events": CPythonCase(
        "test_unix_events", "SelectorEventLoopUnixSocketTests", "setUp", "ATSUnixSocketTests"
    ),
}


def _factory_loop(self: Any) -> asyncio.AbstractEventLoop:
    return cf_loop.new_loop()


def _factory_setup(self: Any) -> None:
    """The reference setUp (``super().setUp()``, a loop, ``set_event_loop``) with our loop."""
    from test.test_asyncio import utils as test_utils

    test_utils.TestCase.setUp(self)
    self.loop = cf_loop.new_loop()
    self.set_event_loop(self.loop)


def build(key: str, module_name: str) -> tuple[dict[str, Any], Any]:
    """The generated class (``{name: class}``) and the source module, for suite ``key``."""
    case = CASES[key]
    source = importlib.import_module(f"test.test_asyncio.{case.module}")
    reference = getattr(source, case.reference)
    hook = _factory_setup if case.hook == "setUp" else _factory_loop
    attrs = {"__module__": module_name, case.hook: hook}
    return {case.name: type(case.name, (reference,), attrs)}, source
