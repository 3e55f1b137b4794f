"""models.toml values that passed `check` but can only fail at run time (issue 11: 7, 10, 11)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from orchestrator.config import (
    MAX_ARG_BYTES,
    ConfigError,
    config_warnings,
    load_config,
    parse_config,
)

SRC = "/etc/mig-orchestrator/models.toml"
MODEL = '[models.alice]\nmodel = "/models/tiny"\nport = 8001\n'


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SRC)
    return info.value.errors


def only_error(text: str) -> str:
    errs = errors_of(text)
    assert len(errs) == 1, errs
    return errs[0]


# ----- item 7: no models -----


@pytest.mark.parametrize("text", ["", "\n  \n", "# all commented out\n"])
def test_an_empty_file_is_refused(text: str) -> None:
    err = only_error(text)
    assert err.startswith(("the file is empty", "models: no [models.<name>] table"))


def test_a_file_without_models_is_refused_with_the_switch_named() -> None:
    err = only_error('[orchestrator]\nlisten = "127.0.0.1:8700"\n')
    assert err.startswith("models: no [models.<name>] table")
    assert "allow_no_models = true" in err


def test_no_models_is_accepted_when_asked_for_explicitly() -> None:
    cfg = parse_config("[orchestrator]\nallow_no_models = true\n", SRC)
    assert cfg.models == {}


# ----- item 10: files that are not text -----


def test_non_utf8_file_names_the_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_bytes(MODEL.encode() + b'student = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        f"not UTF-8 text (byte {len(MODEL) + 14}, line 4): TOML files are UTF-8"
    ]


def test_binary_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors[0].startswith(("not UTF-8 text", "not valid TOML"))


@pytest.mark.parametrize("depth", [200, 5000, 100_000])
def test_deeply_nested_toml_is_a_config_error(depth: int) -> None:
    err = only_error(MODEL + "extra_args = " + "[" * depth + "]" * depth + "\n")
    # Shallow enough for the parser: the type is wrong; deeper: refused as too deep.
    assert err.startswith(("models.alice.extra_args", "not valid TOML: "))


def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    os.mkfifo(path)
    with pytest.raises(ConfigError) as info:
        load_config(path)  # would block forever on open() if it were read
    assert info.value.errors == ["cannot read: not a regular file"]


def test_a_huge_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(MODEL + "#" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_config(path)


# ----- item 11: accepted but can only fail at run time -----


@pytest.mark.parametrize(
    ("line", "where", "says"),
    [
        (
            "health_interval_s = 1e-6",
            "orchestrator.health_interval_s",
            "greater than or equal to 0.5",
        ),
        ("health_timeout_s = 0.0", "orchestrator.health_timeout_s", "greater than or equal to 0.1"),
        ("log_backups = 3000000", "orchestrator.log_backups", "less than or equal to 100"),
        ("stop_grace_s = inf", "orchestrator.stop_grace_s", "finite number"),
        ("startup_timeout_s = nan", "orchestrator.startup_timeout_s", "finite number"),
        ("startup_timeout_s = 1e300", "orchestrator.startup_timeout_s", "less than or equal to"),
        ("max_restarts = 1e9", "orchestrator.max_restarts", "valid integer"),
        ('engine_command = [""]', "orchestrator.engine_command.0", "at least 1 character"),
        ("engine_command = []", "orchestrator.engine_command", "at least 1 item"),
    ],
)
def test_orchestrator_values_out_of_bounds(line: str, where: str, says: str) -> None:
    err = only_error(f"[orchestrator]\n{line}\n" + MODEL)
    assert err.startswith(f"{where}: ") and says in err, err


def test_backoff_max_below_initial() -> None:
    err = only_error("[orchestrator]\nbackoff_initial_s = 10\nbackoff_max_s = 2\n" + MODEL)
    assert err == "orchestrator.backoff_max_s: 2 is below backoff_initial_s (10)"


@pytest.mark.parametrize(
    ("line", "where", "says"),
    [
        ('served_model_name = "a\\u0000b"', "served_model_name", "control character"),
        ('served_model_name = "a\\nb"', "served_model_name", "control character"),
        (f'served_model_name = "{"x" * 1_000_000}"', "served_model_name", "at most 256"),
        ('served_model_name = ""', "served_model_name", "at least 1 character"),
        ('student = "x\\ty"', "student", "control character"),
        ('model = "/m\\u0000"', "model", "control character"),
        ('command = [""]', "command.0", "at least 1 character"),
        ('command = ["python", "-m\\u0000x"]', "command.1", "control character"),
        ('host = "gpu01.example.org"', "host", "is not an IP address"),
        ('host = "127.0.0.1 "', "host", "is not an IP address"),
        ('port = "19401"', "port", "valid integer (got a string)"),
        ("port = 8001.0", "port", "valid integer (got a float)"),
        ('autostart = "yes"', "autostart", "valid boolean (got a string)"),
        ("enable_prefix_caching = 1", "enable_prefix_caching", "valid boolean (got an integer)"),
        ('max_model_len = "4096"', "max_model_len", "valid integer (got a string)"),
        ("max_model_len = 4294967296", "max_model_len", "less than 2147483648"),
        ("slice = -1", "slice", "GPU index -1 is negative"),
        ('env = "HF_TOKEN=x"', "env", "valid dictionary (got a string)"),
        (f'extra_args = ["{"x" * (MAX_ARG_BYTES + 1)}"]', "extra_args", "item 0: 65537 bytes"),
        (f'env = {{ BIG = "{"x" * (10 * 1024 * 1024)}" }}', "env", "more than the 65536"),
    ],
)
def test_model_values_that_fail_only_at_run_time(line: str, where: str, says: str) -> None:
    fields = {"model": '"/models/tiny"', "port": "8001"}
    key, _, value = line.partition(" = ")
    fields[key] = value
    text = "[models.alice]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items())
    err = only_error(text)
    assert err.startswith(f"models.alice.{where}: ") and says in err, err[:300]


def test_exec_size_is_checked_on_the_merged_settings() -> None:
    # Each table alone is under the cap; the engine would get both.
    big = "x" * 60_000
    text = (
        f'[defaults]\nenv = {{ A = "{big}", B = "{big}", C = "{big}" }}\n'
        + MODEL
        + f'env = {{ D = "{big}", E = "{big}" }}\n'
    )
    err = only_error(text)
    assert err.startswith("models.alice: extra_args and env take 300015 bytes"), err


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1", "::", "::1", "10.1.2.3"])
def test_addresses_are_accepted_as_host(host: str) -> None:
    assert parse_config(MODEL + f'host = "{host}"\n', SRC).models["alice"].host == host


def test_defaults_still_parse() -> None:
    cfg = parse_config(MODEL, SRC)
    o = cfg.orchestrator
    assert (o.health_interval_s, o.log_backups, o.stop_grace_s) == (5.0, 3, 30.0)


# ----- privileged ports: valid, but worth a warning -----


def test_privileged_ports_are_warned_about() -> None:
    cfg = parse_config(
        '[orchestrator]\nlisten = "0.0.0.0:443"\n' + MODEL.replace("8001", "80"), SRC
    )
    warnings = config_warnings(cfg, first_free_port=1024)
    assert [w.split(":")[0] for w in warnings] == ["models.alice.port", "orchestrator.listen"]
    assert all("privileged port" in w and "CAP_NET_BIND_SERVICE" in w for w in warnings)
    assert [w.split(":")[0] for w in config_warnings(cfg, first_free_port=100)] == [
        "models.alice.port"
    ]
    assert config_warnings(parse_config(MODEL, SRC)) == []


# ----- `check` from the command line: exit codes, never a traceback -----


def check(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    from orchestrator.cli.main import main

    topology = Path(__file__).resolve().parents[2] / "orchestrator/gpu/topologies/a100-mixed.toml"
    rc = main(["check", "-c", str(path), "--topology", str(topology)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\xff\xfe[\x00m\x00", "not UTF-8 text (byte 0, line 1)"),
        (b"extra_args = " + b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"", "the file is empty"),
        (b"[orchestrator]\n", "allow_no_models = true"),
    ],
    ids=["utf16", "nested", "empty", "no-models"],
)
def test_check_reports_bad_files_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, says: str
) -> None:
    path = tmp_path / "models.toml"
    path.write_bytes(content)
    rc, out, err = check(capsys, path)
    assert (rc, out) == (2, "")
    assert err.startswith(f"{path}: ") and says in err and "Traceback" not in err


def test_check_refuses_a_host_address_this_machine_does_not_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "models.toml"
    # 192.0.2.0/24 is TEST-NET-1: never assigned to a real interface.
    path.write_text(MODEL.replace("/models/tiny", "org/model") + 'host = "192.0.2.7"\n')
    rc, _, err = check(capsys, path)
    assert rc == 1
    assert err == f"{path}: models.alice.host: 192.0.2.7 is not an address of this host\n"


def test_check_warns_on_privileged_ports_but_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = importlib.import_module("orchestrator.cli.config")
    monkeypatch.setattr(cli, "unprivileged_port_start", lambda: 1024)
    path = tmp_path / "models.toml"
    path.write_text(MODEL.replace("8001", "443").replace("/models/tiny", "org/model"))
    rc, out, err = check(capsys, path)
    assert rc == 0 and out.endswith("OK (1 models, 4 slices)\n")
    assert err.startswith(f"{path}: warning: models.alice.port: 443 is a privileged port")
