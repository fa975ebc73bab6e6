"""setuptools needs ``cffi_modules`` here (pyproject.toml has no key for it), the
``_fastio`` extension (``build_ffi.fastio_extension``) and the mypyc extensions of the
compiled modules (``build_ffi.mypyc_extensions``), built with a profile (``build_pgo.py``)."""

import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_ffi import fastio_extension, mypyc_extensions  # noqa: E402
from build_pgo import cmdclass  # noqa: E402

setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    ext_modules=[fastio_extension(), *mypyc_extensions()],
    cmdclass=cmdclass(),
)
