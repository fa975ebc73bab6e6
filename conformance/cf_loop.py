"""The loop factory under test, named ``module:callable`` (e.g. ``asyncio:new_event_loop``).

The runner hands the name to the pytest process in the environment variable
``CONFORMANCE_LOOP``; the generated test cases call :func:`new_loop` for every loop they make.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable

ENV_LOOP = "CONFORMANCE_LOOP"
ENV_IMPLEMENTATION = "CONFORMANCE_IMPLEMENTATION"
DEFAULT_LOOP = "ats_cffi.asyncio:new_event_loop"


def resolve(spec: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The callable that ``spec`` (``module:attr[.attr...]``) names."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"loop factory {spec!r} is not of the form MODULE:FACTORY")
    obj: object = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return obj  # type: ignore[return-value]


def spec_from_env() -> str:
    return os.environ.get(ENV_LOOP, DEFAULT_LOOP)


def new_loop() -> asyncio.AbstractEventLoop:
    """A new loop from the factory named in the environment."""
    return resolve(spec_from_env())()


def subprocess_expr(spec: str) -> str:
    """A Python expression that makes a loop from ``spec`` in a child process."""
    module_name, _, attr_path = spec.partition(":")
    return f"__import__('importlib').import_module({module_name!r}).{attr_path}()"


def detect_implementation(loop: asyncio.AbstractEventLoop) -> str:
    """'uvloop' for a uvloop.Loop, else 'asyncio' (what uvloop's tests compare with)."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    return "uvloop" if isinstance(loop, uvloop.Loop) else "asyncio"


def implementation() -> str:
    """The ``implementation`` the uvloop test cases report (see README.md)."""
    forced = os.environ.get(ENV_IMPLEMENTATION, "auto")
    if forced != "auto":
        return forced
    loop = new_loop()
    try:
        return detect_implementation(loop)
    finally:
        loop.close()


def check_factory(spec: str) -> tuple[str, bool]:
    """Make and close one loop: a one-line description of it, and whether it is an
    ``asyncio.BaseEventLoop`` (CPython's suites need one). Raises when the factory fails."""
    loop = resolve(spec)()
    try:
        if not isinstance(loop, asyncio.AbstractEventLoop):
            raise TypeError(f"{spec} returned {type(loop)!r}, not an event loop")
        kind = type(loop)
        desc = f"{kind.__module__}.{kind.__qualname__} ({detect_implementation(loop)})"
        return desc, isinstance(loop, asyncio.BaseEventLoop)
    finally:
        loop.close()
