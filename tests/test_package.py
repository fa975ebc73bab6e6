"""The package's top level re-exports the public API of every layer."""

from __future__ import annotations

import ats_cffi


def test_every_name_in_all_is_importable_from_the_package() -> None:
    missing = [name for name in ats_cffi.__all__ if not hasattr(ats_cffi, name)]
    assert missing == []


def test_the_top_level_names_are_the_layers_objects() -> None:
    from ats_cffi.dns import dns_processor
    from ats_cffi.eventsystem import MIOBuffer
    from ats_cffi.net import net_processor

    assert ats_cffi.net_processor is net_processor
    assert ats_cffi.dns_processor is dns_processor
    assert ats_cffi.MIOBuffer is MIOBuffer
