"""The argv and environment of one engine: exact flags, slice pinning, secrets kept out of argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import Config, parse_config
from orchestrator.engine.launch import build_launch
from orchestrator.engine.marker import DaemonMark
from orchestrator.engine.nvml_fix import SHIM_DIR
from orchestrator.gpu.inventory import Slice
from orchestrator.inengine.nvml_shim.mig_orchestrator_nvml_shim import UUID_ENV
from orchestrator.units import GIB

SLICE = Slice(
    uuid="MIG-11111111-2222-3333-4444-555555555555",
    gpu_index=0,
    gpu_uuid="GPU-0",
    gpu_name="NVIDIA H100 80GB HBM3",
    profile="3g.40gb",
    memory_total_bytes=40 * GIB,
    gi_id=2,
    ci_id=0,
)
# Every engine's mark (orchestrator/engine/marker.py), for the default state_dir.
# Set whatever the settings say; the daemon's mark comes on top (only with a mark).
FORCED = {"PYTHONSAFEPATH": "1"}
WHOLE = Slice(
    uuid="GPU-66666666-7777-8888-9999-000000000000",
    gpu_index=1,
    gpu_uuid="GPU-66666666-7777-8888-9999-000000000000",
    gpu_name="NVIDIA H100 80GB HBM3",
    profile=None,
    memory_total_bytes=80 * GIB,
)
# What arms the MIG NVML fix in an engine on SLICE (a MIG device).
FIX = {"PYTHONPATH": str(SHIM_DIR), UUID_ENV: SLICE.uuid}
BASE = ["vllm", "serve", "--model", "/models/tiny", "--host", "0.0.0.0", "--port", "8001"]


def cfg_of(model_lines: str = "", defaults: str = "", orchestrator: str = "") -> Config:
    return parse_config(
        f"[orchestrator]\n{orchestrator}\n[defaults]\n{defaults}\n"
        f'[models.alice]\nmodel = "/models/tiny"\nport = 8001\n{model_lines}\n',
        "models.toml",
    )


def argv_of(
    model_lines: str = "", defaults: str = "", overrides: dict[str, object] | None = None
) -> list[str]:
    return build_launch(cfg_of(model_lines, defaults), "alice", SLICE, overrides, base_env={}).argv


def test_bare_model_gets_only_the_identity_flags() -> None:
    assert argv_of() == [*BASE, "--served-model-name", "alice"]


def test_served_model_name_and_host() -> None:
    argv = argv_of('served_model_name = "tiny-chat"\nhost = "127.0.0.1"')
    assert argv == [
        "vllm",
        "serve",
        "--model",
        "/models/tiny",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--served-model-name",
        "tiny-chat",
    ]


def test_every_setting_maps_to_its_vllm_flag_with_extra_args_last() -> None:
    argv = argv_of(
        "gpu_memory_utilization = 0.45\nmax_model_len = 4096\ntensor_parallel_size = 1\n"
        'dtype = "bfloat16"\nmax_num_seqs = 32\nenable_prefix_caching = true\n'
        "enable_chunked_prefill = true\nenforce_eager = true\n"
        'extra_args = ["--seed", "7", "--kv-cache-dtype", "fp8"]'
    )
    assert argv == [
        *BASE,
        "--served-model-name",
        "alice",
        "--gpu-memory-utilization",
        "0.45",
        "--max-model-len",
        "4096",
        "--tensor-parallel-size",
        "1",
        "--dtype",
        "bfloat16",
        "--max-num-seqs",
        "32",
        "--enable-prefix-caching",
        "--enable-chunked-prefill",
        "--enforce-eager",
        "--seed",
        "7",
        "--kv-cache-dtype",
        "fp8",
    ]


def test_false_toggles_become_negative_flags_and_false_eager_is_omitted() -> None:
    argv = argv_of(
        "enable_prefix_caching = false\nenable_chunked_prefill = false\nenforce_eager = false"
    )
    assert argv[len(BASE) + 2 :] == ["--no-enable-prefix-caching", "--no-enable-chunked-prefill"]


def test_unset_settings_leave_vllm_defaults_alone() -> None:
    argv = argv_of("max_model_len = 2048")
    assert argv[len(BASE) + 2 :] == ["--max-model-len", "2048"]
    for flag in ("--gpu-memory-utilization", "--enforce-eager", "--dtype"):
        assert flag not in argv
    assert not any("prefix-caching" in a or "chunked-prefill" in a for a in argv)


def test_defaults_and_overrides_reach_the_argv() -> None:
    argv = argv_of(
        "max_model_len = 1024",
        defaults="gpu_memory_utilization = 0.3\nenable_prefix_caching = true",
        overrides={"enable_prefix_caching": False, "max_num_seqs": 4},
    )
    assert argv[len(BASE) + 2 :] == [
        "--gpu-memory-utilization",
        "0.3",
        "--max-model-len",
        "1024",
        "--max-num-seqs",
        "4",
        "--no-enable-prefix-caching",
    ]


def test_disable_log_requests_is_never_passed() -> None:
    # vLLM 0.33 removed the flag: passing it is an argparse error that kills the engine.
    everything = (
        "gpu_memory_utilization = 0.5\nmax_model_len = 64\nenable_prefix_caching = false\n"
        "enable_chunked_prefill = false\nenforce_eager = true\nmax_num_seqs = 1\ndtype = 'auto'"
    )
    for lines in ("", everything):
        assert not any("log-requests" in a for a in argv_of(lines))


def test_per_model_command_overrides_engine_command() -> None:
    cfg = cfg_of(
        'command = ["/opt/vllm-cpu/bin/python", "-m", "vllm.entrypoints.openai.api_server"]',
        orchestrator='engine_command = ["/usr/local/bin/vllm", "serve"]',
    )
    argv = build_launch(cfg, "alice", SLICE, base_env={}).argv
    assert argv[:5] == [
        "/opt/vllm-cpu/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/tiny",
    ]
    other = build_launch(
        cfg_of(orchestrator='engine_command = ["/usr/local/bin/vllm", "serve"]'),
        "alice",
        SLICE,
        base_env={},
    )
    assert other.argv[:3] == ["/usr/local/bin/vllm", "serve", "--model"]


def test_engine_sees_only_its_slice() -> None:
    launch = build_launch(
        cfg_of(), "alice", SLICE, base_env={"CUDA_VISIBLE_DEVICES": "0,1", "PATH": "/bin"}
    )
    assert launch.env["CUDA_VISIBLE_DEVICES"] == SLICE.uuid
    assert launch.extra_env == {
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": SLICE.uuid,
        **FIX,
    }
    assert launch.env["PATH"] == "/bin"


def test_whole_gpu_engine_launches_without_the_mig_fix() -> None:
    base = {"PATH": "/bin", "PYTHONPATH": "/site"}
    launch = build_launch(cfg_of(), "alice", WHOLE, base_env=base)
    assert launch.extra_env == {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": WHOLE.uuid}
    assert launch.env == {**base, **launch.extra_env, **FORCED}


def test_mig_fix_goes_first_on_the_pythonpath_the_engine_would_have_had() -> None:
    from_daemon = build_launch(cfg_of(), "alice", SLICE, base_env={"PYTHONPATH": "/a:/b"})
    assert from_daemon.env["PYTHONPATH"] == f"{SHIM_DIR}:/a:/b"
    from_config = build_launch(
        cfg_of('env = { PYTHONPATH = "/c" }'), "alice", SLICE, base_env={"PYTHONPATH": "/a"}
    )
    assert from_config.env["PYTHONPATH"] == f"{SHIM_DIR}:/c"


@pytest.mark.parametrize(
    ("model_line", "defaults", "overrides", "armed"),
    [
        ("", "mig_nvml_fix = false", None, False),
        ("mig_nvml_fix = true", "mig_nvml_fix = false", None, True),
        ("mig_nvml_fix = false", "", None, False),
        ("", "", {"mig_nvml_fix": False}, False),
        ("mig_nvml_fix = false", "", {"mig_nvml_fix": True}, True),
    ],
)
def test_mig_fix_can_be_turned_off(
    model_line: str, defaults: str, overrides: dict[str, object] | None, armed: bool
) -> None:
    cfg = cfg_of(model_line, defaults)
    launch = build_launch(cfg, "alice", SLICE, overrides, base_env={})
    assert (launch.extra_env.items() >= FIX.items()) is armed
    assert armed or not FIX.keys() & launch.env.keys()


def test_settings_env_is_merged_but_cannot_move_the_engine_off_its_slice() -> None:
    launch = build_launch(
        cfg_of(
            'env = { VLLM_LOGGING_LEVEL = "DEBUG", CUDA_VISIBLE_DEVICES = "0" }',
            defaults='env = { HF_HUB_OFFLINE = "1" }',
        ),
        "alice",
        SLICE,
        base_env={"HOME": "/root"},
    )
    assert launch.env == {
        "HOME": "/root",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_LOGGING_LEVEL": "DEBUG",
        "CUDA_VISIBLE_DEVICES": SLICE.uuid,
        **FORCED,
        **FIX,
    }


def test_no_slice_sets_no_cuda_visible_devices() -> None:
    launch = build_launch(cfg_of(), "alice", None, base_env={})
    assert "CUDA_VISIBLE_DEVICES" not in launch.env


def test_systemd_variables_are_not_inherited() -> None:
    base = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1234",
        "LISTEN_FDS": "1",
        "LISTEN_PID": "1234",
        "INVOCATION_ID": "abc",
    }
    env = build_launch(cfg_of(), "alice", SLICE, base_env=base).env
    assert env == {
        "INVOCATION_ID": "abc",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": SLICE.uuid,
        **FORCED,
        **FIX,
    }


def test_every_engine_is_marked_with_its_daemon_and_model_and_no_setting_removes_it(
    tmp_path: Path,
) -> None:
    cfg = cfg_of(
        'env = { MIG_ORCH_ENGINE = "elsewhere:bob", SPT_NOENV = "", PYTHONSAFEPATH = "" }',
        orchestrator=f'state_dir = "{tmp_path}"',
    )
    mark = DaemonMark.load(tmp_path)
    base = {"MIG_ORCH_ENGINE": "inherited:x"}
    launch = build_launch(cfg, "alice", SLICE, base_env=base, mark=mark)
    assert launch.env["MIG_ORCH_ENGINE"] == f"{mark.tag}:alice"
    # setproctitle (vLLM's EngineCore) would otherwise overwrite /proc/PID/environ, mark and all.
    assert launch.env["SPT_NOENV"] == "1"
    assert launch.env["PYTHONSAFEPATH"] == "1"
    # Shown, or built without the daemon's mark: no mark at all, never an inherited or set one.
    assert "MIG_ORCH_ENGINE" not in build_launch(cfg, "alice", SLICE, base_env=base).env


def test_os_environ_is_the_default_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIG_ORCH_TEST_MARKER", "yes")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    env = build_launch(cfg_of(), "alice", SLICE).env
    assert env["MIG_ORCH_TEST_MARKER"] == "yes"
    assert "NOTIFY_SOCKET" not in env


def test_api_key_goes_to_env_never_argv(tmp_path: Path) -> None:
    key = "sk-student-alice-0123456789"
    key_file = tmp_path / "alice.key"
    key_file.write_text(f"{key}\n")
    key_file.chmod(0o600)
    launch = build_launch(cfg_of(f'api_key_file = "{key_file}"'), "alice", SLICE, base_env={})
    assert launch.env["VLLM_API_KEY"] == key
    assert launch.extra_env["VLLM_API_KEY"] == key
    assert not any(key in a for a in launch.argv)
    assert "--api-key" not in launch.argv
    assert launch.redacted_env() == {
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": SLICE.uuid,
        **FIX,
        "VLLM_API_KEY": "***",
    }
    # A Launch (or a spec holding one) that ends up in a log line must not carry the key.
    assert key not in repr(launch)


def test_api_key_set_through_env_table_is_redacted_too() -> None:
    launch = build_launch(
        cfg_of('env = { VLLM_API_KEY = "inline-secret" }'), "alice", SLICE, base_env={}
    )
    assert launch.redacted_env()["VLLM_API_KEY"] == "***"
    assert "inline-secret" not in str(launch.redacted_env())


def test_plan_can_show_the_env_without_reading_the_key(tmp_path: Path) -> None:
    # `plan` runs away from the server too, where the key file does not exist.
    cfg = cfg_of(f'api_key_file = "{tmp_path / "nope.key"}"')
    launch = build_launch(cfg, "alice", SLICE, base_env={}, read_secrets=False)
    assert launch.redacted_env()["VLLM_API_KEY"] == "***"


def test_missing_api_key_file_is_an_error(tmp_path: Path) -> None:
    cfg = cfg_of(f'api_key_file = "{tmp_path / "nope.key"}"')
    with pytest.raises(ValueError, match=r"API key file .*nope\.key: cannot read"):
        build_launch(cfg, "alice", SLICE, base_env={})


def test_world_readable_api_key_file_is_refused_at_launch(tmp_path: Path) -> None:
    # Launch reads the key with the same reader as `check` and the daemon's start-up.
    key_file = tmp_path / "alice.key"
    key_file.write_text("sk-alice\n")
    key_file.chmod(0o644)
    cfg = cfg_of(f'api_key_file = "{key_file}"')
    with pytest.raises(ValueError, match="readable by every user"):
        build_launch(cfg, "alice", SLICE, base_env={})


def test_engine_fork_is_no_flag_and_only_a_plain_launch_puts_it_in_the_environment() -> None:
    launch = build_launch(cfg_of("engine_fork = true"), "alice", SLICE, base_env={})
    assert launch.argv == argv_of() and launch.fork
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in launch.env  # what a standby starts with
    assert launch.spawn_env() == {**launch.env, "VLLM_WORKER_MULTIPROC_METHOD": "fork"}
    plain = build_launch(cfg_of(), "alice", SLICE, base_env={})
    assert not plain.fork and plain.spawn_env() == plain.env
    assert plain.command == ("vllm", "serve") and plain.argv[:2] == list(plain.command)
