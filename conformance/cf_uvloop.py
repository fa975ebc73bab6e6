"""uvloop's own test mixins over the loop factory under test.

Every module of uvloop's tests combines its mixins twice: ``Test_UV_X(_TestX, tb.UVTestCase)``
and ``Test_AIO_X(_TestX, tb.AIOTestCase)``. For each class on ``AIOTestCase`` this builds
``Test_ATS_X(_TestX, ATSTestCase)`` (the class name with ``AIO`` replaced by ``ATS``), with the
attributes the AIO class defines itself (a few override a test or set ``NEW_LOOP``).
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import cf_loop
from uvloop import _testbase as tb


class ATSTestCase(tb.AIOTestCase):
    """uvloop's AIO test base (a SafeChildWatcher on Python < 3.12) with the factory's loop.

    ``implementation`` is what uvloop's tests compare with ``'asyncio'`` to skip or adapt
    uvloop-only expectations: 'asyncio' for an asyncio-compatible loop (ats_cffi's is a
    SelectorEventLoop subclass), 'uvloop' when the factory makes a uvloop.Loop; the
    runner's ``--implementation`` forces one. ``is_asyncio_loop()`` follows it.
    """

    implementation = "asyncio"

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return cf_loop.new_loop()

    def new_policy(self) -> asyncio.AbstractEventLoopPolicy:
        return asyncio.DefaultEventLoopPolicy()

    def is_asyncio_loop(self) -> bool:
        """uvloop's own test asks whether the loop's class lives in ``asyncio.*`` (to tell
        asyncio's from uvloop's); a loop subclassing asyncio's, in another module, answers
        as its ``implementation`` says."""
        return self.implementation == "asyncio"


def _own_attrs(cls: type) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for name, value in vars(cls).items():
        if name.startswith("__") and name.endswith("__") and not name.startswith("__unittest"):
            continue  # but keep unittest.skip*'s __unittest_skip__ and __unittest_skip_why__
        if isinstance(value, types.FunctionType) and "__class__" in value.__code__.co_freevars:
            raise TypeError(f"{cls.__qualname__}.{name} uses super(): cannot be rebased")
        attrs[name] = value
    return attrs


def _rebase(cls: type, implementation: str, module_name: str) -> type:
    bases = tuple(ATSTestCase if base is tb.AIOTestCase else base for base in cls.__bases__)
    attrs = _own_attrs(cls)
    attrs["__module__"] = module_name
    attrs["implementation"] = implementation
    if "NEW_LOOP" in attrs:
        attrs["NEW_LOOP"] = cf_loop.subprocess_expr(cf_loop.spec_from_env())
    name = cls.__name__.replace("AIO", "ATS")
    return type(cls)(name, bases, attrs)


def make_cases(module: types.ModuleType, module_name: str) -> dict[str, type]:
    """``{name: class}`` of the rebased test cases of one uvloop test module.

    ``module_name`` is the module the classes are put in (the generated stub's).
    """
    implementation = cf_loop.implementation()
    cases: dict[str, type] = {}
    for value in list(vars(module).values()):
        if isinstance(value, type) and tb.AIOTestCase in value.__bases__:
            new = _rebase(value, implementation, module_name)
            cases[new.__name__] = new
    if not cases:
        raise LookupError(f"{module.__name__} has no class on uvloop's AIOTestCase")
    return cases
