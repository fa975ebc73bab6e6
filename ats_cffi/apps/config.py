"""Records files for ``--config``: ``proxy.config.*`` keys in TOML or YAML.

Keys may be written flat (``"proxy.config.net.connections_throttle" = 100``), nested
(``[proxy.config.net]`` / ``connections_throttle = 100``), or under ATS 10's ``records``
root (``records: {net: {connections_throttle: 100}}``), which stands for ``proxy.config``.
YAML needs PyYAML (``*.yaml``/``*.yml``); any other file is read as TOML.

The keys are those of ``net_config`` (``proxy.config.net.*``, ``proxy.config.accept_threads``),
of ``http_config`` (``proxy.config.http.*``: the http command's timeouts), of ``tls_config``
(``proxy.config.ssl.*``: read when the command makes its TLS contexts, before it forks its
workers) and, when the DNS layer is installed, of ``dns_config`` (``proxy.config.dns.*``,
``proxy.config.hostdb.host_file.path``). SIGHUP re-reads the file and applies the records in
``DYNAMIC_RECORDS`` (then the command re-reads the ticket key file its
``proxy.config.ssl.server.ticket_key.filename`` names); the others are read when the threads,
listeners, TLS contexts, services or resolver start, so a change to them needs a restart.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ats_cffi.net import change_net_connections_throttle, net_config
from ats_cffi.net.tls import tls_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger("ats.apps.config")

#: The ticket key file's record: SIGHUP reads the file it names again (``apps/tls.py``).
TICKET_KEY_RECORD = "proxy.config.ssl.server.ticket_key.filename"
#: Records the net layer reads each time it uses them (so a reload takes effect), and the
#: ticket key file.
DYNAMIC_RECORDS = net_config.dynamic_keys() | {TICKET_KEY_RECORD}


class ConfigError(ValueError):
    """A records file that cannot be read or holds a bad record; the message names both."""


def _flatten(prefix: str, node: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
    for key, value in node.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} is not a string")
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            _flatten(name, value, out, where)
        else:
            out[name] = value


def parse_records(path: str | Path) -> dict[str, Any]:
    """The records of the file at ``path`` as ``{"proxy.config.x": value}``, unvalidated.
    ``ConfigError`` when it cannot be read or parsed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{p}: YAML needs PyYAML (pip install pyyaml)") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{p}: expected a mapping of records at the top")
    if set(doc) == {"records"} and isinstance(doc["records"], Mapping):
        out: dict[str, Any] = {}
        _flatten("proxy.config", doc["records"], out, str(p))
        return out
    out = {}
    _flatten("", doc, out, str(p))
    return out


def record_stores() -> list[Any]:
    """The live record stores: ``net_config``, the http command's ``http_config``
    (``proxy.config.http.*``), ``tls_config`` (``proxy.config.ssl.*``), and ``dns_config``
    (``proxy.config.dns.*``, ``proxy.config.hostdb.*``) when the DNS layer is installed."""
    from ats_cffi.apps.http import http_config

    stores: list[Any] = [net_config, http_config, tls_config]
    try:
        from ats_cffi.dns import dns_config  # type: ignore[import-not-found, attr-defined]
    except ImportError:
        pass
    else:
        stores.append(dns_config)
    return stores


def _store_of(key: str, stores: list[Any]) -> Any:
    for store in stores:
        if any(k == key for k, _ in store.items()):
            return store
    return None


def validate_records(records: Mapping[str, Any], where: str) -> None:
    """``ConfigError`` naming ``where`` and the key for an unknown record or a bad value."""
    stores = record_stores()
    # Scratch stores judge each value (type, range) without touching the live ones.
    scratch = {id(s): type(s)() for s in stores}
    for key, value in records.items():
        store = _store_of(key, stores)
        if store is None:
            raise ConfigError(f"{where}: unknown record {key!r}")
        if isinstance(value, float) and value != value:
            raise ConfigError(f"{where}: {key}: must be a number, not NaN")
        try:
            scratch[id(store)].set(key, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None


def load_records(path: str | Path) -> dict[str, Any]:
    """Read and validate the records file at ``path``. ``ConfigError`` on any problem."""
    records = parse_records(path)
    validate_records(records, str(path))
    return records


def apply_records(records: Mapping[str, Any]) -> None:
    """Set every record (already validated)."""
    stores = record_stores()
    for key, value in records.items():
        _store_of(key, stores).set(key, value)


def reset_records() -> None:
    """Every record store back to its defaults."""
    for store in record_stores():
        store.reset()


def reload_records(path: str | Path, pinned: frozenset[str] = frozenset()) -> list[str]:
    """SIGHUP: re-read ``path`` and apply its dynamic records that changed, except those in
    ``pinned`` (set on the command line, which wins). Returns the changed keys. A changed
    record that is not dynamic is logged as needing a restart. ``ConfigError`` (nothing
    applied) when the file is now invalid."""
    records = load_records(path)
    stores = record_stores()
    changed = []
    for key, value in records.items():
        if key in pinned or _store_of(key, stores).get(key) == value:
            continue
        if key not in DYNAMIC_RECORDS:
            log.warning("%s: %s changed; it takes effect after a restart", path, key)
            continue
        _store_of(key, stores).set(key, value)
        changed.append(key)
    if "proxy.config.net.connections_throttle" in changed:
        change_net_connections_throttle()
    return changed
