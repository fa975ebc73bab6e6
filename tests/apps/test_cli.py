"""The command line: entry points, one-line errors with exit status 2, a port in use (1),
records files (TOML, YAML) and their reload on SIGHUP."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ats_cffi.apps import cli as cli_module
from ats_cffi.apps.config import ConfigError, load_records, parse_records
from ats_cffi.net import net_config

from .conftest import REPO, get_json, wait_for


@pytest.fixture(autouse=True)
def _reset_records():
    yield
    net_config.reset()


def _run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ats_cffi", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def _status(args: list[str]) -> int:
    """``main(args)``'s exit status, whether returned or raised (argparse exits)."""
    try:
        return cli_module.main(args)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_python_dash_m_and_the_console_script_show_the_services() -> None:
    out = _run("--help")
    assert out.returncode == 0
    assert "{echo,tunnel,http}" in out.stdout
    script = shutil.which("ats-cffi", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the ats-cffi script is not installed next to this python")
    out = subprocess.run([script, "tunnel", "--help"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "--upstream" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "required"),
        (["ftp"], "invalid choice"),
        (["echo", "--listen", "nohostport"], "HOST:PORT"),
        (["echo", "--listen", "127.0.0.1:70000"], "port out of range"),
        (["echo", "--listen", "::1:80"], "[::1]:PORT"),
        (["http", "--workers", "0"], "must be >= 1"),
        (["http", "--inactivity-timeout", "0"], "must be > 0"),
        (["http", "--inactivity-timeout", "nan"], "expected a finite number, got 'nan'"),
        (["echo", "--drain-timeout", "inf"], "expected a finite number, got 'inf'"),
        (["echo", "--net-threads", "100000"], "must be <= 3072"),
        (["echo", "--workers", "5000"], "must be <= 1024"),
        (["http", "--net-threads", "two"], "expected int"),
        (["http", "--bogus"], "unrecognized arguments"),
        (["tunnel", "--listen", "127.0.0.1:0"], "--upstream"),
        (["tunnel", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:0"], "--upstream"),
        (["echo", "--defer-accept", "10000000000"], "defer_accept: must be <= 2147483647"),
        (["echo", "--accept-threads", "100000"], "accept_threads: must be <= 1024"),
    ],
)
def test_bad_options_give_one_line_and_status_2(capsys, args, message) -> None:
    assert _status(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ats-cffi: error:") and message in err[0]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.toml", "proxy.config.net.nosuch = 1\n", "unknown record 'proxy.config.net.nosuch'"),
        ("bad.toml", '"proxy.config.net.poll_timeout" = "fast"\n', "expected a number"),
        ("bad.toml", "[proxy.config.net]\nconnections_throttle = -3\n", "connections_throttle"),
        ("bad.toml", "[proxy.config.http]\ntransaction_active_timeout_in = -1\n", "must be >= 0"),
        ("bad.toml", "proxy.config.http.nosuch = 1\n", "unknown record 'proxy.config.http.nosuch'"),
        ("big.toml", "[proxy.config.net]\nlisten_backlog = 10000000000\n", "must be <= 2147483647"),
        ("bad.toml", "proxy.config.net = [1\n", "not valid TOML"),
        ("bad.yaml", "proxy.config.net.poll_timeout: [1, 2]\n", "expected a number"),
        ("bad.yaml", "- just\n- a list\n", "mapping"),
        ("missing.toml", None, "cannot read"),
    ],
)
def test_bad_config_files_give_one_line_and_status_2(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert _status(["echo", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ats-cffi: error:") and message in err[0], err


def test_records_files_flat_nested_and_ats_records_yaml_are_read_alike(tmp_path) -> None:
    want = {
        "proxy.config.net.connections_throttle": 100,
        "proxy.config.accept_threads": 0,
        "proxy.config.net.default_inactivity_timeout": 1.5,
    }
    flat = tmp_path / "flat.toml"
    flat.write_text(
        '"proxy.config.net.connections_throttle" = 100\n'
        '"proxy.config.accept_threads" = 0\n'
        '"proxy.config.net.default_inactivity_timeout" = 1.5\n'
    )
    nested = tmp_path / "nested.toml"
    nested.write_text(
        "[proxy.config]\naccept_threads = 0\n"
        "[proxy.config.net]\nconnections_throttle = 100\ndefault_inactivity_timeout = 1.5\n"
    )
    ats = tmp_path / "records.yaml"
    ats.write_text(
        "records:\n  accept_threads: 0\n  net:\n"
        "    connections_throttle: 100\n    default_inactivity_timeout: 1.5\n"
    )
    for path in (flat, nested, ats):
        assert load_records(path) == want
    assert parse_records(tmp_path / "flat.toml") == want
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_records(empty) == {}
    with pytest.raises(ConfigError):
        load_records(tmp_path / "nope.toml")


def test_command_line_options_win_over_the_file(tmp_path) -> None:
    path = tmp_path / "records.toml"
    path.write_text(
        "[proxy.config.net]\nconnections_throttle = 100\ndefer_accept = 3\npoll_timeout = 7\n"
    )
    settings = cli_module.parse_args(
        ["echo", "--config", str(path), "--connections-throttle", "9", "--inactivity-timeout", "2"]
    )
    cli_module.configure_records(settings)
    assert net_config.connections_throttle == 9
    assert net_config.defer_accept == 3
    assert net_config.poll_timeout == 7
    assert net_config.inactivity_check_frequency == 0.5  # a quarter of the timeout
    settings = cli_module.parse_args(["echo"])
    cli_module.configure_records(settings)
    assert net_config.defer_accept == 0  # the command's own default
    assert net_config.connections_throttle == 30000  # ATS's


def test_the_http_records_reach_the_http_services(tmp_path) -> None:
    from ats_cffi.apps.runner import build_services

    path = tmp_path / "records.yaml"
    path.write_text(
        "records:\n  http:\n    keep_alive_no_activity_timeout_in: 60\n"
        "    transaction_no_activity_timeout_in: 5\n    transaction_active_timeout_in: 0\n"
    )
    for extra, idle in (([], 60.0), (["--inactivity-timeout", "7"], 7.0)):
        settings = cli_module.parse_args(
            ["http", "--config", str(path), "--stats", "127.0.0.1:0", *extra]
        )
        cli_module.configure_records(settings)
        services = build_services(settings, None)
        assert len(services) == 2  # the stats listener takes them too
        for service in services:
            assert service.inactivity_timeout == idle  # the option wins over the record
            assert service.transaction_no_activity_timeout == 5.0  # type: ignore[attr-defined]
            assert service.transaction_active_timeout == 0.0  # type: ignore[attr-defined]
    settings = cli_module.parse_args(["http"])
    cli_module.configure_records(settings)  # back to ATS's defaults
    (service,) = build_services(settings, None)
    assert (service.inactivity_timeout, service.transaction_no_activity_timeout) == (120.0, 30.0)  # type: ignore[attr-defined]
    assert service.transaction_active_timeout == 900.0  # type: ignore[attr-defined]


def test_a_stalled_request_is_closed_after_the_records_timeout(cli, tmp_path) -> None:
    path = tmp_path / "records.toml"
    path.write_text("[proxy.config.http]\ntransaction_no_activity_timeout_in = 0.3\n")
    srv = cli("http", "--listen", "127.0.0.1:0", "--config", str(path)).wait_listening()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the server (the InactivityCop runs every 1 s)
        assert 0.25 < time.monotonic() - t0 < 3.0
    # The stalled request was never answered, so not counted (nor yet the stats request,
    # counted with its answer); the server still answers whole ones.
    assert get_json(srv.port)["global"]["proxy.process.http.incoming_requests"] == 0


def test_a_port_in_use_is_a_clear_error_with_status_1(cli) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        for extra in ([], ["--workers", "2"]):
            c = cli("echo", "--listen", f"127.0.0.1:{port}", *extra)
            assert c.wait(20) == 1
            err = c.stderr().strip().splitlines()
            assert err == [
                f"ats-cffi: error: cannot listen on 127.0.0.1:{port}: address already in use"
            ]
            assert c.rest_of_output() == []


def test_sighup_reloads_the_dynamic_records_of_the_config_file(cli, tmp_path) -> None:
    path = tmp_path / "records.toml"
    path.write_text("[proxy.config.net]\ndefault_inactivity_timeout = 100\n")
    srv = cli("http", "--listen", "127.0.0.1:0", "--config", str(path)).wait_listening()
    path.write_text(
        "[proxy.config.net]\ndefault_inactivity_timeout = 200\nmax_read_per_pass = 4096\n"
    )
    srv.signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: reloaded" in srv.stderr())
    err = srv.stderr()
    assert "(proxy.config.net.default_inactivity_timeout)" in err
    assert "max_read_per_pass changed; it takes effect after a restart" in err
    path.write_text("this is not toml")
    srv.signal(signal.SIGHUP)
    wait_for(lambda: "keeping the records in force" in srv.stderr())
    assert get_json(srv.port)["service"] == "http"  # still serving
    srv.signal(signal.SIGTERM)
    assert srv.wait(10) == 0


def test_the_command_accepts_on_the_net_threads_unless_asked(cli) -> None:
    # accept_threads 0 by default (the module doc of cli.py): no dedicated accept thread.
    def threads(*argv: str) -> int:
        srv = cli("echo", "--listen", "127.0.0.1:0", *argv).wait_listening()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
        return len(list(Path(f"/proc/{srv.pid}/task").iterdir()))

    assert threads() == threads("--accept-threads", "1") - 1 == threads("--accept-threads", "0")


def test_http_idle_connections_time_out_after_atss_keep_alive_default() -> None:
    from ats_cffi.apps.http import KEEP_ALIVE_TIMEOUT
    from ats_cffi.apps.runner import build_services

    def timeouts(*argv: str) -> list[float]:
        services = build_services(cli_module.parse_args(list(argv)), None)
        return [s.inactivity_timeout for s in services]

    assert KEEP_ALIVE_TIMEOUT == 120.0  # proxy.config.http.keep_alive_no_activity_timeout_in
    assert timeouts("http", "--stats", "127.0.0.1:0") == [120.0, 120.0]
    assert timeouts("http", "--inactivity-timeout", "3") == [3.0]
    # echo keeps no timeout of its own (the net default applies); its stats listener is HTTP.
    assert timeouts("echo", "--stats", "127.0.0.1:0") == [0.0, 120.0]


@pytest.mark.parametrize(
    "value, error",
    [(float("nan"), ValueError), (float("inf"), ValueError), (-1, ValueError), ("5", TypeError)],
)
def test_a_service_refuses_a_bad_inactivity_timeout_when_made(value: Any, error: type) -> None:
    # Not later, at every connection (each session would fail to start).
    from ats_cffi.apps.echo import EchoService
    from ats_cffi.apps.http import HttpService

    for cls in (EchoService, HttpService):
        with pytest.raises(error, match="inactivity_timeout"):
            cls(inactivity_timeout=value)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda m: m.echo.EchoService(native="no"), TypeError, "native must be a bool"),
        (lambda m: m.echo.EchoService(worker=-1), ValueError, "worker must be None or an int"),
        (lambda m: m.tunnel.TunnelService("127.0.0.1:80"), TypeError, "(host, port) tuple"),
        (lambda m: m.tunnel.TunnelService(("127.0.0.1", 0)), ValueError, "port must be in"),
        (lambda m: m.tunnel.TunnelService(("a\0b", 80)), ValueError, "upstream host"),
        (lambda m: m.tunnel.TunnelService(("", 80)), ValueError, "upstream host"),
        (lambda m: m.tunnel.TunnelService(("::1", 80), native=1), TypeError, "native"),
        (lambda m: m.http.HttpService(routes={"/": print}), TypeError, "routes must be"),
        (lambda m: m.http.HttpService(routes={b"/a?b": print}), TypeError, "without '?'"),
        (lambda m: m.http.HttpService(stats_source="x"), TypeError, "stats_source"),
    ],
)
def test_services_refuse_bad_arguments_when_made(make: Any, error: type, message: str) -> None:
    # A bad upstream would otherwise fail at every connection, a bad route at every request.
    import types

    from ats_cffi.apps import echo, http, tunnel

    with pytest.raises(error, match=re.escape(message)):
        make(types.SimpleNamespace(echo=echo, http=http, tunnel=tunnel))


def test_serving_tunes_the_cyclic_collector() -> None:
    # In a child: the freeze and the thresholds are process-wide.
    code = (
        "import gc, weakref\n"
        "from ats_cffi.apps import runner\n"
        "class Cycle:\n"
        "    pass\n"
        "c = Cycle(); c.me = c; dead = weakref.ref(c); del c  # start-up garbage\n"
        "runner.tune_gc()\n"
        "print(gc.get_threshold()[0] == runner.GC_YOUNG_THRESHOLD > 700,\n"
        "      gc.get_freeze_count() > 1000, dead() is None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    # Thresholds set, what was left frozen, the garbage collected first (not frozen).
    assert out.stdout.split() == ["True", "True", "True"], out.stderr
