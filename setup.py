"""setuptools needs ``cffi_modules`` here (pyproject.toml has no key for it), and the mypyc
extensions of the compiled modules (``build_ffi.mypyc_extensions``)."""

import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_ffi import mypyc_extensions  # noqa: E402

setup(cffi_modules=["build_ffi.py:ffibuilder"], ext_modules=mypyc_extensions())
