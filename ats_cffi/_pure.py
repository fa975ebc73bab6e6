"""``ATS_CFFI_PURE=1``: import the mypyc-compiled modules from their Python source.

A module that mypyc compiled exists twice in the package: ``netvc.py`` and the extension
``netvc.cpython-*.so``, which the import system prefers. ``prefer_source`` puts a finder
first on ``sys.meta_path`` that answers for the modules of ``_compiled.MODULES`` with their
``.py`` file, so that the same checkout can run (and be tested) interpreted.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from ats_cffi._compiled import MODULES

_ROOT = Path(__file__).resolve().parent.parent


class _SourceFinder:
    """Finds the modules of ``MODULES`` as source files; leaves every other one alone."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(
            name, _ROOT / (name.replace(".", "/") + ".py")
        )


def prefer_source() -> None:
    """Install the finder (once)."""
    if not any(f is _SourceFinder for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder)  # type: ignore[arg-type]


def compiled() -> bool:
    """True if the compiled modules are the ones imported (not the source)."""
    from ats_cffi.eventsystem import continuation

    return not (continuation.__file__ or "").endswith(".py")
