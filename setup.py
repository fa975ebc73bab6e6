"""setuptools needs ``cffi_modules`` here: pyproject.toml has no key for it."""

from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
