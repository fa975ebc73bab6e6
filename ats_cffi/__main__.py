"""``python -m ats_cffi``: the ``ats-cffi`` command."""

from __future__ import annotations

import sys

from ats_cffi.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
