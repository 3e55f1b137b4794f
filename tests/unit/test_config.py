"""models.toml parsing: every error names file, model and field; effective settings; paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.config import ConfigError, load_config, parse_config

SRC = "/etc/mig-orchestrator/models.toml"
EXAMPLE = Path(__file__).resolve().parents[2] / "models.toml"

ONE_MODEL = """
[models.alice]
model = "/models/tiny"
port = 8001
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SRC)
    assert info.value.source == SRC
    # Every printed line starts with the file so a sysadmin knows where to look.
    for line in str(info.value).splitlines():
        assert line.startswith(f"{SRC}: ")
    return info.value.errors


def only_error(text: str) -> str:
    errs = errors_of(text)
    assert len(errs) == 1, errs
    return errs[0]


def test_minimal_config_uses_documented_defaults() -> None:
    cfg = parse_config(ONE_MODEL, SRC)
    o = cfg.orchestrator
    assert (o.listen_host, o.listen_port) == ("127.0.0.1", 8700)
    assert o.engine_command == ["vllm", "serve"]
    m = cfg.models["alice"]
    assert (m.model, m.port, m.host, m.autostart, m.share_gpu) == (
        "/models/tiny",
        8001,
        "0.0.0.0",
        True,
        False,
    )
    assert cfg.effective_settings("alice").set_fields() == {}


@pytest.mark.parametrize(
    ("text", "where", "suggestion"),
    [
        (
            ONE_MODEL + "gpu_memory_utilisation = 0.5\n",
            "models.alice.gpu_memory_utilisation",
            "gpu_memory_utilization",
        ),
        ('[orchestrator]\nlisten_adress = "127.0.0.1:1"\n', "orchestrator.listen_adress", "listen"),
        (
            "[orchestrator]\nstartup_timeout = 5\n",
            "orchestrator.startup_timeout",
            "startup_timeout_s",
        ),
        (
            "[defaults]\nenable_prefix_cache = true\n",
            "defaults.enable_prefix_cache",
            "enable_prefix_caching",
        ),
        ("[default]\nmax_model_len = 5\n", "default", "defaults"),
    ],
)
def test_unknown_key_is_an_error_with_did_you_mean(text: str, where: str, suggestion: str) -> None:
    assert only_error(text) == f"{where}: unknown setting (did you mean {suggestion!r}?)"


def test_unknown_key_without_a_close_match_has_no_suggestion() -> None:
    assert only_error(ONE_MODEL + "zzzz = 1\n") == "models.alice.zzzz: unknown setting"


def test_model_named_like_a_field_still_gets_model_suggestions() -> None:
    # "port" is both a ModelConfig field and, here, a model name: the walk must not get confused.
    text = '[models.port]\nmodel = "m"\nport = 8001\nprt = 3\n'
    assert only_error(text) == "models.port.prt: unknown setting (did you mean 'port'?)"


def test_duplicate_ports_name_both_models() -> None:
    text = ONE_MODEL + '[models.bob]\nmodel = "m"\nport = 8001\n'
    assert only_error(text) == "models.bob.port: port 8001 is also used by models.alice"


def test_three_models_on_one_port_report_each_extra_one() -> None:
    text = "".join(f'[models.{n}]\nmodel = "m"\nport = 9000\n' for n in ("c", "a", "b"))
    assert errors_of(text) == [
        "models.a.port: port 9000 is also used by models.c",
        "models.b.port: port 9000 is also used by models.c",
    ]


def test_model_port_equal_to_control_plane_port() -> None:
    text = '[orchestrator]\nlisten = "127.0.0.1:9100"\n[models.alice]\nmodel = "m"\nport = 9100\n'
    err = only_error(text)
    assert err.startswith("models.alice.port: 9100 is the control plane's port")


def test_tensor_parallel_above_one_is_refused_in_a_model() -> None:
    err = only_error(ONE_MODEL + "tensor_parallel_size = 2\n")
    assert err.startswith(
        "models.alice.tensor_parallel_size: tensor_parallel_size > 1 is not possible"
    )


def test_tensor_parallel_above_one_is_refused_in_defaults() -> None:
    err = only_error("[defaults]\ntensor_parallel_size = 4\n" + ONE_MODEL)
    assert err.startswith("defaults.tensor_parallel_size: tensor_parallel_size > 1 is not possible")


def test_tensor_parallel_of_one_is_accepted() -> None:
    cfg = parse_config(ONE_MODEL + "tensor_parallel_size = 1\n", SRC)
    assert cfg.effective_settings("alice").tensor_parallel_size == 1


@pytest.mark.parametrize(
    ("value", "bound"),
    [("0", "greater than 0"), ("1.01", "less than or equal to 1"), ("-0.5", "greater than 0")],
)
def test_gpu_memory_utilization_outside_zero_one(value: str, bound: str) -> None:
    err = only_error(ONE_MODEL + f"gpu_memory_utilization = {value}\n")
    assert err == f"models.alice.gpu_memory_utilization: Input should be {bound}"


def test_gpu_memory_utilization_bounds_apply_to_defaults_too() -> None:
    err = only_error("[defaults]\ngpu_memory_utilization = 2\n")
    assert err.startswith("defaults.gpu_memory_utilization: ")


def test_gpu_memory_utilization_of_exactly_one_is_allowed() -> None:
    cfg = parse_config(ONE_MODEL + "gpu_memory_utilization = 1\n", SRC)
    assert cfg.models["alice"].gpu_memory_utilization == 1.0


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        ('profile = "3g.40gb"\nmin_memory_gib = 20\n', "profile and min_memory_gib"),
        ('profile = "3g.40gb"\nslice = 0\n', "profile and slice"),
        ('min_memory_gib = 20\nslice = "MIG-x"\n', "min_memory_gib and slice"),
        (
            'profile = "3g.40gb"\nmin_memory_gib = 20\nslice = 0\n',
            "profile and min_memory_gib and slice",
        ),
    ],
)
def test_more_than_one_slice_selector(lines: str, named: str) -> None:
    assert only_error(ONE_MODEL + lines) == f"models.alice: choose one slice selector, not {named}"


def test_share_gpu_on_a_mig_profile() -> None:
    text = ONE_MODEL + 'share_gpu = true\nprofile = "1g.10gb"\ngpu_memory_utilization = 0.4\n'
    assert (
        only_error(text)
        == "models.alice.share_gpu: sharing needs a whole GPU, not a 1g.10gb MIG slice"
    )


def test_share_gpu_without_gpu_memory_utilization() -> None:
    err = only_error(ONE_MODEL + "share_gpu = true\n")
    assert err.startswith("models.alice.gpu_memory_utilization: required with share_gpu")


def test_share_gpu_takes_gpu_memory_utilization_from_defaults() -> None:
    cfg = parse_config(
        "[defaults]\ngpu_memory_utilization = 0.45\n" + ONE_MODEL + "share_gpu = true\n", SRC
    )
    assert cfg.effective_settings("alice").gpu_memory_utilization == 0.45


@pytest.mark.parametrize(
    "listen", ["localhost", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000", "1.2.3.4:http"]
)
def test_bad_listen_address(listen: str) -> None:
    err = only_error(f'[orchestrator]\nlisten = "{listen}"\n' + ONE_MODEL)
    assert err == f"orchestrator.listen: listen must be HOST:PORT, got {listen!r}"


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("0.0.0.0:80", "0.0.0.0", 80), ("[::1]:8700", "::1", 8700), (":9000", "127.0.0.1", 9000)],
)
def test_listen_host_and_port(listen: str, host: str, port: int) -> None:
    o = parse_config(f'[orchestrator]\nlisten = "{listen}"\n' + ONE_MODEL, SRC).orchestrator
    assert (o.listen_host, o.listen_port) == (host, port)


@pytest.mark.parametrize("name", ["bad name", ".hidden", "-dash", "x" * 64, "a/b", "ünï"])
def test_invalid_model_names(name: str) -> None:
    err = only_error(f'[models."{name}"]\nmodel = "m"\nport = 8001\n')
    assert err.startswith(f"models.{name}: invalid model name")
    assert "letters, digits" in err


@pytest.mark.parametrize("name", ["a", "student-01", "Bob_2.v1", "x" * 63])
def test_valid_model_names(name: str) -> None:
    assert list(parse_config(f'[models."{name}"]\nmodel = "m"\nport = 8001\n', SRC).models) == [
        name
    ]


def test_invalid_toml_names_the_file_and_position() -> None:
    err = only_error("[models.alice\nmodel = 1\n")
    assert err.startswith("not valid TOML: ")
    assert "line 1" in err


def test_missing_required_fields_are_named() -> None:
    assert errors_of("[models.alice]\nhost = '127.0.0.1'\n") == [
        "models.alice.model: Field required",
        "models.alice.port: Field required",
    ]


def test_wrong_types_are_named() -> None:
    err = only_error(ONE_MODEL + 'enable_prefix_caching = "yes please"\n')
    assert err.startswith("models.alice.enable_prefix_caching: ")


def test_all_problems_are_reported_at_once() -> None:
    text = (
        "[defaults]\nmax_num_seq = 4\n"
        '[models.a]\nmodel = "m"\nport = 8001\ngpu_memory_utilisation = 0.5\n'
        '[models.b]\nmodel = "m"\nport = 99999\n'
    )
    errs = errors_of(text)
    assert [e.split(":")[0] for e in errs] == [
        "defaults.max_num_seq",
        "models.a.gpu_memory_utilisation",
        "models.b.port",
    ]


def test_effective_settings_layer_defaults_model_overrides() -> None:
    text = """
[defaults]
gpu_memory_utilization = 0.5
max_model_len = 2048
enable_prefix_caching = true
extra_args = ["--seed", "1"]
env = { A = "defaults", B = "defaults" }

[models.alice]
model = "m"
port = 8001
max_model_len = 4096
enforce_eager = true
env = { B = "model", C = "model" }
"""
    cfg = parse_config(text, SRC)
    s = cfg.effective_settings("alice")
    assert s.set_fields() == {
        "gpu_memory_utilization": 0.5,
        "max_model_len": 4096,
        "enable_prefix_caching": True,
        "enforce_eager": True,
        "extra_args": ["--seed", "1"],
        "env": {"A": "defaults", "B": "model", "C": "model"},
    }
    o = cfg.effective_settings(
        "alice",
        {
            "enable_prefix_caching": False,
            "extra_args": [],
            "env": {"C": "override", "D": "override"},
        },
    )
    assert o.enable_prefix_caching is False
    assert o.max_model_len == 4096
    assert o.extra_args == []  # lists are replaced, not merged
    assert o.env == {"A": "defaults", "B": "model", "C": "override", "D": "override"}
    # Runtime overrides never leak back into the configuration.
    assert cfg.effective_settings("alice") == s


def test_effective_settings_refuses_unknown_override() -> None:
    cfg = parse_config(ONE_MODEL, SRC)
    with pytest.raises(ValueError, match="gpu_memory_utilisation"):
        cfg.effective_settings("alice", {"gpu_memory_utilisation": 0.5})


@pytest.mark.parametrize("env", [1.5, "A=1", ["A"]])
def test_effective_settings_refuses_an_env_override_that_is_no_table(env: object) -> None:
    # Found by test_api_fuzz: a non-table env reached the merge and raised TypeError (a 500).
    cfg = parse_config(ONE_MODEL, SRC)
    with pytest.raises(ValidationError, match="env"):
        cfg.effective_settings("alice", {"env": env})


def test_effective_settings_refuses_tensor_parallel_override() -> None:
    cfg = parse_config(ONE_MODEL, SRC)
    with pytest.raises(ValueError, match="tensor_parallel_size > 1 is not possible"):
        cfg.effective_settings("alice", {"tensor_parallel_size": 2})


def test_load_config_resolves_relative_paths_against_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "models.toml"
    path.write_text(
        """
[orchestrator]
state_dir = "state"
log_dir = "../logs"
topology = "topo/h100.toml"
admin_token_file = "/abs/admin.token"
eval_db = "eval/eval.sqlite"
metrics_token_file = "metrics.token"

[models.alice]
model = "relative/model/dir"
port = 8001
api_key_file = "keys/alice.key"
token_file = "tokens/alice.token"
"""
    )
    cfg = load_config(path)
    o = cfg.orchestrator
    base = folder.resolve()
    assert o.state_dir == base / "state"
    assert o.log_dir == base / "../logs"
    assert o.topology == base / "topo/h100.toml"
    assert o.admin_token_file == Path("/abs/admin.token")
    assert o.eval_db == base / "eval/eval.sqlite"
    assert o.metrics_token_file == base / "metrics.token"
    m = cfg.models["alice"]
    assert m.api_key_file == base / "keys/alice.key"
    assert m.token_file == base / "tokens/alice.token"
    # `model` is a vLLM argument (a hub id or a directory): it is passed through untouched.
    assert m.model == "relative/model/dir"


def test_load_config_keeps_absolute_defaults(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(ONE_MODEL)
    o = load_config(path).orchestrator
    assert o.state_dir == Path("/var/lib/mig-orchestrator")
    assert o.topology is None


def test_load_config_error_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(ONE_MODEL + "gpu_memory_utilisation = 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"{path}: models.alice.gpu_memory_utilisation: unknown setting"
    )


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_example_models_toml_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert sorted(cfg.models) == ["student-a", "student-b", "student-c"]
    assert len({m.port for m in cfg.models.values()}) == len(cfg.models)
    for name in cfg.models:
        s = cfg.effective_settings(name)
        assert s.enable_prefix_caching is True  # the course measures prefix caching
        assert s.env is not None and "HF_HOME" in s.env


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('env = { "A=B" = "1" }', "'A=B' is not a valid environment variable name"),
        ('env = { A = "x\\u0000y" }', "A: contains a NUL character"),
        ('extra_args = ["--x", "a\\u0000"]', "item 1: contains a NUL character"),
    ],
)
def test_values_exec_cannot_pass_are_refused(setting: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f'[models.a]\nmodel = "m"\nport = 8001\n{setting}\n')
    assert message in str(e.value) and "models.a." in str(e.value)


def test_standby_is_on_by_default_and_a_model_can_turn_it_off() -> None:
    cfg = parse_config(ONE_MODEL, SRC)
    assert cfg.standby_of("alice") == (True, None)
    off = parse_config(ONE_MODEL + "standby = false\nstandby_preload = []\n", SRC)
    assert off.standby_of("alice") == (False, [])
    text = '[orchestrator]\nstandby = false\nstandby_preload = ["a.b"]\n' + ONE_MODEL
    assert parse_config(text, SRC).standby_of("alice") == (False, ["a.b"])
    assert parse_config(text + "standby = true\n", SRC).standby_of("alice") == (True, ["a.b"])


@pytest.mark.parametrize("name", ["a,b", "a b", "1x", "a..b", ""])
def test_standby_preload_takes_module_names_only(name: str) -> None:
    err = only_error(ONE_MODEL + f'standby_preload = ["ok.mod", "{name}"]\n')
    assert err.startswith("models.alice.standby_preload: item 1: ")
    assert err.endswith("is not a Python module name (like 'a.b.c')")


def test_engine_fork_is_a_setting_that_layers_like_the_others() -> None:
    cfg = parse_config("[defaults]\nengine_fork = true\n" + ONE_MODEL, SRC)
    assert cfg.effective_settings("alice").engine_fork is True
    assert cfg.effective_settings("alice", {"engine_fork": False}).engine_fork is False
    assert "standby" in only_error("[defaults]\nstandby = true\n" + ONE_MODEL)
