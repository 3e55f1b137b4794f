"""What Kubernetes cannot express is refused before anything is written, naming model, setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.config import ConfigError, parse_config

BASE = """
[kubernetes]
image = "vllm/vllm-openai:v0.11.0"

[kubernetes.node_pools.a100]
gpu = "A100-80GB"
gpus = 1

[models.alice]
model = "Qwen/Qwen2.5-1.5B-Instruct"
port = 8001
profile = "3g.40gb"
"""


def bob(settings: str) -> str:
    return f'[models.bob]\nmodel = "m"\nport = 8002\n{settings}\n'


def render(tmp_path: Path, extra: str, *options: str) -> tuple[int, str, Path]:
    config = tmp_path / "models.toml"
    config.write_text(BASE + extra, encoding="utf-8")
    out = tmp_path / "out"
    return main(["k8s", "render", "-c", str(config), "-o", str(out), *options]), str(config), out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            bob('slice = "MIG-0a6f2c1e-3d4b-5e6f-8a9b-0c1d2e3f4a51"'),
            "models.bob.slice: 'MIG-0a6f2c1e-3d4b-5e6f-8a9b-0c1d2e3f4a51' pins a UUID; on "
            "Kubernetes the device plugin picks the device",
        ),
        (
            bob('slice = "GPU-96aa1897-0522-43e4-9ef9-413e0393bdbc"'),
            "models.bob.slice: 'GPU-96aa1897-0522-43e4-9ef9-413e0393bdbc' pins a UUID",
        ),
        (
            '[models.bob]\nmodel = "m"\nport = 8002\nslice = 1\n',
            "models.bob.slice: 1 pins a GPU index",
        ),
        (
            bob("share_gpu = true\ngpu_memory_utilization = 0.4"),
            "models.bob.share_gpu: the device plugin gives each container whole devices",
        ),
        (
            '[models.bob]\nmodel = "m"\nport = 8002\nprofile = "1g.10gb+me"\n',
            "models.bob.profile: '1g.10gb+me': a Kubernetes resource name cannot contain '+'",
        ),
        (
            '[models.bob]\nmodel = "m"\nport = 8002\nprofile = "3g.40gb"\nhost = "127.0.0.1"\n',
            "models.bob.host: 127.0.0.1 is a loopback address: its Service could not reach it",
        ),
        (
            '[models.Bob_1]\nmodel = "m"\nport = 8002\nprofile = "1g.10gb"\n',
            "models.Bob_1: the model's name becomes its Deployment and Service name",
        ),
        (
            '[models.bob]\nmodel = "/srv/models/llama"\nport = 8002\nprofile = "1g.10gb"\n',
            "models.bob.model: /srv/models/llama is a path on this host",
        ),
        (
            # The gateway routes by served name: two engines under one name cannot both be had.
            '[kubernetes.gateway]\nenabled = true\nimage = "registry/mig-orchestrator:0.1.0"\n'
            '[models.bob]\nmodel = "m"\nport = 8002\nprofile = "1g.10gb"\n'
            'served_model_name = "alice"\n',
            "models.bob.served_model_name: 'alice' is also served by models.alice; the gateway "
            "routes by this name, so each model needs its own while "
            "kubernetes.gateway.enabled = true",
        ),
    ],
    ids=[
        "mig-uuid",
        "gpu-uuid",
        "gpu-index",
        "share-gpu",
        "plus-me",
        "loopback",
        "name",
        "path",
        "served-twice",
    ],
)
def test_refused_naming_model_and_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, expected: str
) -> None:
    rc, config, out = render(tmp_path, extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{config}: cannot render for Kubernetes:" in err
    assert expected in err
    assert not out.exists()  # nothing written


def test_more_slices_than_the_pools_hold_gives_the_planners_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = "".join(
        f'[models.s{i}]\nmodel = "m"\nport = {8010 + i}\nprofile = "3g.40gb"\n' for i in range(2)
    )
    rc, _, out = render(tmp_path, extra)
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert (
        "models.s1: its 3g.40gb fits no GPU of the pools (the planner needs one more A100-80GB"
        in err
    )
    assert (
        "not enough GPUs in the MIG pools: 2 GPU(s) with MIG: the instances take 12 memory slots "
        "and 9 compute slices (8 and 7 per GPU); fewer than 2 GPUs cannot hold that much"
    ) in err
    assert "needs 2 GPUs, 1 available" in err
    # One more GPU in the pool, from the command line, and it fits.
    assert render(tmp_path, extra, "--pool", "a100=A100-80GB:1:2")[0] == 0


def test_a_model_no_profile_of_the_pool_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, _ = render(tmp_path, '[models.bob]\nmodel = "m"\nport = 8002\nprofile = "3g.71gb"\n')
    assert rc == 2
    assert "models.bob: profile '3g.71gb' does not exist on A100-80GB" in capsys.readouterr().err


@pytest.mark.parametrize(
    "image", ["vllm/vllm-openai", "registry:5000/vllm/vllm-openai", "vllm:latest"]
)
def test_an_image_without_a_tag_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], image: str
) -> None:
    rc, config, _ = render(tmp_path, "", "--image", image)
    assert rc == 2
    assert f"{config}: kubernetes.image: {image!r}" in capsys.readouterr().err
    with pytest.raises(
        ConfigError, match=r"kubernetes.image: .* has no tag|changes under a running"
    ):
        parse_config(BASE.replace("vllm/vllm-openai:v0.11.0", image))


def test_no_image_at_all_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render(tmp_path, "")[0] == 0  # the same models, with the image
    config = tmp_path / "bare.toml"
    config.write_text(BASE.split("[kubernetes]")[0] + BASE.split("gpus = 1")[1], encoding="utf-8")
    assert (
        main(["k8s", "render", "-c", str(config), "-o", str(tmp_path / "o"), "--pool", "a=A100:1"])
        == 2
    )
    assert "kubernetes.image: required" in capsys.readouterr().err


def test_kubernetes_table_is_strict() -> None:
    bad = BASE.replace('gpu = "A100-80GB"', 'gpu = "A100-80GB"\ngpuz = 2')
    with pytest.raises(
        ConfigError,
        match=r"kubernetes.node_pools.a100.gpuz: unknown setting \(did you mean 'gpu'\?\)",
    ):
        parse_config(bad)
    with pytest.raises(ConfigError, match=r"kubernetes.gpus: unknown setting"):
        parse_config(BASE.replace('image = "', 'gpus = 1\nimage = "'))
    with pytest.raises(
        ConfigError, match=r"kubernetes.node_pools.a100.gpus: Input should be a valid integer"
    ):
        parse_config(BASE.replace("gpus = 1", 'gpus = "1"'))


def test_pool_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"kubernetes.node_pools.A_100: invalid pool name"):
        parse_config(BASE.replace("node_pools.a100", "node_pools.A_100"))
    rc, _, _ = render(tmp_path, "", "--pool", "all-disabled=A100-80GB:1")
    assert rc == 2
    assert "kubernetes.node_pools.all-disabled: the GPU operator's config name for MIG off" in (
        capsys.readouterr().err
    )


def test_whole_gpu_pool_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = '[kubernetes.node_pools.l40s]\ngpu = "L40S"\nmig = false\nmodels = ["alice", "nobody"]\n'
    rc, _, _ = render(tmp_path, pool)
    err = capsys.readouterr().err
    assert rc == 2
    assert (
        "kubernetes.node_pools.l40s.models: 2 models, one whole GPU each, but the pool has 1 GPUs"
        in err
    )
    assert "kubernetes.node_pools.l40s.models: no model 'nobody' in [models]" in err
    assert "models.alice.profile: pool l40s gives it a whole GPU" in err
