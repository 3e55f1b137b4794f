"""The offline bundle: target lists, closure resolution, wheel rewriting, parts, the installer's
checks. Resolution runs against an in-memory index; nothing here calls pip or the network."""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from pathlib import Path

import pytest

from orchestrator.bundle import build as bundle
from orchestrator.bundle import install as bundle_install
from orchestrator.bundle.pack import parse_size, write_archive
from orchestrator.bundle.resolve import Policy, ResolveError, Resolver
from orchestrator.bundle.target import (
    Requirement,
    Target,
    TargetError,
    Version,
    parse_installed,
)
from orchestrator.bundle.wheel import Wheel, WheelError, read_wheel, repack
from orchestrator.cli import bundle as bundle_cli
from tests.fake_wheels import make_wheel

PY312 = Target.parse("3.12.3", "manylinux_2_35_x86_64", {})


def _target(**installed: str | None) -> Target:
    return Target(
        PY312.python,
        PY312.glibc,
        PY312.arch,
        {k.replace("_", "-"): Version(v) if v else None for k, v in installed.items()},
    )


class FakeIndex:
    """name -> {version: requires}; `fetch` answers like pip: the newest version that fits."""

    def __init__(self, packages: dict[str, dict[str, tuple[str, ...]]]) -> None:
        self.packages = packages
        self.calls: list[list[str]] = []

    def __call__(self, requirements: list[str]) -> list[Wheel]:
        self.calls.append(requirements)
        out = []
        for text in requirements:
            req = Requirement(text)
            versions = self.packages.get(req.name, {})
            fitting = [v for v in versions if req.specifier.contains(v, prereleases=True)]
            if not fitting:
                raise ResolveError(f"no version of {req.name} matches {req.specifier}")
            best = max(fitting, key=Version)
            out.append(
                Wheel(
                    path=Path(f"{req.name.replace('-', '_')}-{best}-py3-none-any.whl"),
                    name=req.name,
                    version=Version(best),
                    requires=tuple(Requirement(r) for r in versions[best]),
                    requires_python=None,
                )
            )
        return out


def _resolve(index: FakeIndex, target: Target, roots: list[str], **policy: object):
    resolver = Resolver(target, Policy(**policy), index)  # type: ignore[arg-type]
    return resolver.resolve([Requirement(r) for r in roots])


# --- what the target has -------------------------------------------------------------------


def test_installed_lists_read_freeze_list_and_bare_names() -> None:
    lines = [
        "# comment",
        "torch==2.11.0+cu130",
        "Foo_Bar==1.0  # trailing comment",
        "pkg @ file:///tmp/pkg-1.0.tar.gz",
        "-e git+https://example.org/x.git#egg=Editable_Thing",
        "Package    Version",
        "---------- -------",
        "numpy      2.5.2",
        "matplotlib",
    ]
    got = parse_installed(lines, "t.txt")
    assert got == {
        "torch": Version("2.11.0+cu130"),
        "foo-bar": Version("1.0"),
        "pkg": None,
        "editable-thing": None,
        "numpy": Version("2.5.2"),
        "matplotlib": None,
    }


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["torch==not a version!"], "t.txt:1"),
        (["-e ./local"], "t.txt:1: editable install without #egg=NAME"),
        (["# only a comment"], "lists no packages"),
    ],
)
def test_installed_list_errors_name_the_line(lines: list[str], message: str) -> None:
    with pytest.raises(TargetError, match=message):
        parse_installed(lines, "t.txt")


def test_target_flags_are_checked() -> None:
    with pytest.raises(TargetError, match="--python-version"):
        Target.parse("py3", "manylinux_2_35_x86_64", {})
    with pytest.raises(TargetError, match="--platform"):
        Target.parse("3.12", "linux_x86_64", {})


def test_target_platforms_cover_older_glibc_and_legacy_aliases() -> None:
    plats = Target.parse("3.12", "manylinux_2_28_x86_64", {}).platforms()
    assert plats[0] == "manylinux_2_28_x86_64"
    assert "manylinux_2_17_x86_64" in plats and "manylinux2014_x86_64" in plats
    assert "manylinux_2_29_x86_64" not in plats


# --- resolution ----------------------------------------------------------------------------


def test_markers_are_evaluated_for_the_target_not_this_host() -> None:
    index = FakeIndex(
        {
            "app": {
                "1.0": (
                    'old-backport; python_version < "3.12"',
                    'only-312; python_version >= "3.12"',
                    'arm-only; platform_machine == "aarch64"',
                    'win-only; sys_platform == "win32"',
                )
            },
            "old-backport": {"1.0": ()},
            "only-312": {"1.0": ()},
            "arm-only": {"1.0": ()},
            "win-only": {"1.0": ()},
        }
    )
    res = _resolve(index, PY312, ["app"])
    assert set(res.ship) == {"app", "only-312"}


def test_extras_pull_their_requirements_and_only_theirs() -> None:
    index = FakeIndex(
        {
            "web": {"2.0": ("core", 'speedups; extra == "fast"', 'docs-tool; extra == "docs"')},
            "core": {"1.0": ()},
            "speedups": {"1.0": ()},
            "docs-tool": {"1.0": ()},
        }
    )
    assert set(_resolve(index, PY312, ["web[fast]"]).ship) == {"web", "core", "speedups"}
    assert set(_resolve(index, PY312, ["web"]).ship) == {"web", "core"}


def test_the_target_ends_the_walk_and_its_version_is_checked() -> None:
    index = FakeIndex(
        {
            "engine": {"1.0": ("torch==2.11.0", "numba==0.65.0", "helper", "mystery>=3")},
            "helper": {"1.0": ()},
            # never fetched: the target has them
            "torch": {"2.11.0": ("huge-cuda-lib",)},
            "numba": {"0.65.0": ()},
        }
    )
    target = _target(torch="2.11.0+cu130", numba="0.68.0", mystery=None)
    res = _resolve(index, target, ["engine"])
    assert set(res.ship) == {"engine", "helper"}
    assert res.provided == {
        "torch": Version("2.11.0+cu130"),
        "numba": Version("0.68.0"),
        "mystery": None,
    }
    # +cu130 is a local label: ==2.11.0 accepts it; numba does not satisfy ==0.65.0
    assert [m.name for m in res.mismatches] == ["numba"]
    assert "the target has 0.68.0, but engine 1.0 wants ==0.65.0" in res.mismatches[0].describe()
    assert all("torch" not in call for batch in index.calls for call in batch)


def test_replace_ships_a_package_the_target_has() -> None:
    index = FakeIndex({"engine": {"1.0": ("numba==0.65.0",)}, "numba": {"0.65.0": ()}})
    res = _resolve(index, _target(numba="0.68.0"), ["engine"], replace=frozenset({"numba"}))
    assert res.ship["numba"].version == Version("0.65.0") and not res.mismatches


def test_override_replaces_a_pin_and_keeps_the_extras() -> None:
    index = FakeIndex(
        {
            "engine": {"1.0": ("tvm-ffi==0.1.10", "grammar[fast]<1")},
            "grammar": {"0.2.8": ("tvm-ffi>=0.1.11", 'fastlib; extra == "fast"'), "0.2.9": ()},
            "tvm-ffi": {"0.1.10": (), "0.1.15.post2": ()},
            "fastlib": {"1.0": ()},
        }
    )
    policy = {
        "overrides": {
            "grammar": Requirement("grammar==0.2.8"),
            "tvm-ffi": Requirement("tvm-ffi==0.1.15.post2"),
        }
    }
    res = _resolve(index, PY312, ["engine"], **policy)
    assert {n: str(w.version) for n, w in res.ship.items()} == {
        "engine": "1.0",
        "grammar": "0.2.8",
        "tvm-ffi": "0.1.15.post2",
        "fastlib": "1.0",
    }
    assert any("overridden: tvm-ffi==0.1.10" in e.parent for e in res.edges["tvm-ffi"])


def test_without_the_override_the_conflicting_pins_are_reported_with_their_parents() -> None:
    index = FakeIndex(
        {
            "engine": {"1.0": ("tvm-ffi==0.1.10", "grammar")},
            "grammar": {"0.2.9": ("tvm-ffi>=0.1.11",)},
            "tvm-ffi": {"0.1.10": (), "0.1.15": ()},
        }
    )
    with pytest.raises(ResolveError) as err:
        _resolve(index, PY312, ["engine"])
    text = str(err.value)
    assert "tvm-ffi" in text and "engine 1.0 wants ==0.1.10" in text
    assert "grammar 0.2.9 wants >=0.1.11" in text


def test_excluded_packages_and_what_only_they_need_stay_out() -> None:
    index = FakeIndex(
        {
            "engine": {"1.0": ("kernels", "shared")},
            "kernels": {"1.0": ("giant-libs", "shared")},
            "giant-libs": {"1.0": ()},
            "shared": {"1.0": ()},
        }
    )
    res = _resolve(index, PY312, ["engine"], exclude={"kernels": "Blackwell only"})
    assert set(res.ship) == {"engine", "shared"}
    assert res.excluded == {"kernels": "Blackwell only"}
    assert res.required_by("kernels") == ["engine 1.0"]


def test_a_later_narrower_requirement_refetches_an_older_version() -> None:
    index = FakeIndex(
        {
            "app": {"1.0": ("lib", "pinner")},
            "lib": {"1.0": ("old-dep",), "2.0": ("new-dep",)},
            "pinner": {"1.0": ("lib<2",)},
            "old-dep": {"1.0": ()},
            "new-dep": {"1.0": ()},
        }
    )
    res = _resolve(index, PY312, ["app"])
    assert str(res.ship["lib"].version) == "1.0"
    # lib 2.0's dependency was walked once, then dropped with it
    assert set(res.ship) == {"app", "lib", "pinner", "old-dep"}


def test_prefer_reuses_another_environments_wheels_and_walks_their_dependencies() -> None:
    index = FakeIndex({"pydantic": {"2.15": ("pydantic-core",)}, "pydantic-core": {"2.0": ()}})
    engine = _resolve(index, PY312, ["pydantic"])
    daemon_wheel = Wheel(
        Path("daemon-0.1-py3-none-any.whl"),
        "daemon",
        Version("0.1"),
        (Requirement("pydantic>=2"),),
        None,
    )
    calls = len(index.calls)
    res = Resolver(
        PY312, Policy(), index, local=[daemon_wheel], prefer=engine.ship.values()
    ).resolve([Requirement("daemon")])
    assert set(res.ship) == {"daemon", "pydantic", "pydantic-core"}
    assert res.ship["pydantic"] is engine.ship["pydantic"]
    assert len(index.calls) == calls  # nothing fetched again


def test_a_wheel_for_another_platform_is_refused() -> None:
    def fetch(reqs: list[str]) -> list[Wheel]:
        native = Path("native-1.0-cp312-cp312-macosx_11_0_arm64.whl")
        return [Wheel(native, "native", Version("1.0"), (), None)]

    with pytest.raises(ResolveError, match="does not run on the target"):
        Resolver(PY312, Policy(), fetch).resolve([Requirement("native")])


# --- wheels and parts ----------------------------------------------------------------------


def test_read_wheel_uses_metadata(tmp_path: Path) -> None:
    path = make_wheel(tmp_path, "My_Pkg", "1.2", ('dep>=1; extra == "x"',), extras=("x",))
    wheel = read_wheel(path)
    assert (wheel.name, str(wheel.version)) == ("my-pkg", "1.2")
    assert [str(r) for r in wheel.requires] == ['dep>=1; extra == "x"']
    broken = tmp_path / "broken-1.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(WheelError, match=r"broken-1\.0"):
        read_wheel(broken)


def test_repack_drops_files_from_the_wheel_and_its_record(tmp_path: Path) -> None:
    files = {"eng/__init__.py": "", "eng/_fa2.so": "x" * 1000, "eng/_fa3.so": "y" * 100}
    src = make_wheel(tmp_path / "in", "eng", "1.0", files=files)
    out = tmp_path / "out" / src.name
    assert repack(src, out, ["eng/_fa2*"]) == ["eng/_fa2.so"]
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        record = z.read("eng-1.0.dist-info/RECORD").decode()
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
    assert "eng/_fa2.so" not in names and "eng/_fa3.so" in names
    assert "_fa2" not in record and "eng/_fa3.so" in record
    with pytest.raises(WheelError, match="matches no file"):
        repack(src, out, ["eng/_fa4*"])


def test_parts_split_at_the_size_and_join_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "wheels").mkdir(parents=True)
    # incompressible content, so the archive really spans several parts
    (root / "wheels" / "a.bin").write_bytes(bytes(range(256)) * 600 + os.urandom(50000))
    (root / "wheels" / "b.bin").write_bytes(b"small")
    out = tmp_path / "out"
    out.mkdir()
    archive = write_archive(root, ["wheels/b.bin", "wheels/a.bin"], out, part_size=20_000)
    assert len(archive.parts) >= 3
    assert all(p.size == 20_000 for p in archive.parts[:-1]) and archive.parts[-1].size <= 20_000
    manifest = {"archive": {"parts": [vars(p) for p in archive.parts]}}
    paths = bundle_install.verify_parts(out, manifest)
    bundle_install.unpack(paths, tmp_path / "unpacked")
    for name in ("a.bin", "b.bin"):
        assert (tmp_path / "unpacked" / "wheels" / name).read_bytes() == (
            root / "wheels" / name
        ).read_bytes()
    # a damaged and a missing part are both named before anything is unpacked
    (out / archive.parts[1].name).write_bytes(b"damaged")
    (out / archive.parts[2].name).unlink()
    with pytest.raises(bundle_install.InstallError) as err:
        bundle_install.verify_parts(out, manifest)
    assert archive.parts[1].name in str(err.value) and f"{archive.parts[2].name}: missing" in str(
        err.value
    )


@pytest.mark.parametrize(("text", "size"), [("58M", 58_000_000), ("1g", 10**9), ("0", 0)])
def test_part_size_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_recipe_files_allow_comments_and_values_with_spaces(tmp_path: Path) -> None:
    recipe = tmp_path / "t.args"
    recipe.write_text(
        "# the target\n--python-version 3.12.3\n\n--exclude tilelang=DSv4 kernels (45 MB)  # why\n"
    )
    parser = argparse.ArgumentParser()
    bundle_cli.add_bundle(parser.add_subparsers())
    args = parser.parse_args(
        ["bundle", f"@{recipe}", "--out", "o", "--target-packages", "t", "--platform", "p"]
    )
    assert args.python_version == "3.12.3"
    assert args.exclude == ["tilelang=DSv4 kernels (45 MB)"]


def test_shipped_recipe_parses_into_options() -> None:
    recipe = bundle.REPO / "dev" / "gpu" / "targets" / "h200-cuda.args"
    parser = argparse.ArgumentParser()
    bundle_cli.add_bundle(parser.add_subparsers())
    args = parser.parse_args(["bundle", f"@{recipe}", "--out", "/tmp/x"])
    # relative paths in the recipe are relative to the repository root
    args.target_packages = str(bundle.REPO / args.target_packages)
    opts = bundle_cli.options(args)
    assert opts.target.installed["torch"] == Version("2.11.0+cu130")
    assert str(opts.policy.overrides["xgrammar"]) == "xgrammar==0.2.8"
    assert opts.drop == {"vllm": ["vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so"]}
    assert opts.part_size == 58_000_000 and "tilelang" in opts.policy.exclude


def test_installer_reports_what_the_target_lacks_or_has_in_another_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = {"numba": "0.68.0", "torch": "2.11.0+cu130", "protobuf": None}
    monkeypatch.setattr(bundle_install, "_installed_versions", lambda python, names: found)
    provided = {
        "numba": {"wants": "==0.65.0", "required_by": ["vllm 0.26.0"]},
        "torch": {"wants": "==2.11.0", "required_by": ["vllm 0.26.0"]},
        "protobuf": {"wants": ">=5.29.6", "required_by": ["vllm 0.26.0"]},
    }
    warnings = bundle_install.check_provided(tmp_path / "python", provided)
    assert len(warnings) == 2
    assert "numba 0.68.0 here, but ==0.65.0 is wanted by vllm 0.26.0" in warnings[0]
    assert "protobuf: the bundle assumed the target has it" in warnings[1]


def test_installer_refuses_a_manifest_of_another_format(tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(bundle_install.InstallError, match="format 99"):
        bundle_install.load_manifest(tmp_path)
    with pytest.raises(bundle_install.InstallError, match="is --bundle the bundle folder"):
        bundle_install.load_manifest(tmp_path / "nowhere")
