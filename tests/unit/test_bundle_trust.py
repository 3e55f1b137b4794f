"""The offline bundle's installer on a Python without tarfile's `data` filter (3.11.0 to 3.11.3,
Debian 12's 3.11.2): archive modes that would leave the venv writable by every user, or a
setuid program in it, are stripped as the filter would. And what the hashes do not prove."""

from __future__ import annotations

import io
import lzma
import os
import stat
import tarfile
from pathlib import Path

import pytest

from orchestrator.bundle import install as bundle_install
from orchestrator.bundle.pack import SUMS, write_sums

MEMBERS = {  # name: (mode, uid)
    "venv": (0o777, 1234),
    "venv/bin/tool": (0o4777, 1234),  # setuid and world-writable
    "venv/lib/data.py": (0o2666, 0),
    "venv/lib": (0o1777, 0),
}


def hostile_archive(path: Path) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, (mode, uid) in sorted(MEMBERS.items()):
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.uname = mode, uid, uid, "someone"
            body = b""
            if name.endswith(("tool", ".py")):
                body = b"#!/bin/sh\necho hi\n"
                info.size = len(body)
            else:
                info.type = tarfile.DIRTYPE
            tar.addfile(info, io.BytesIO(body))
    path.write_bytes(lzma.compress(raw.getvalue()))
    return path


@pytest.mark.parametrize("has_filter", [False, True])
def test_no_setid_bit_nor_write_for_others_survives_unpacking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_filter: bool
) -> None:
    if not has_filter:
        monkeypatch.setattr(bundle_install, "_SAFE", {})  # as on 3.11.0 to 3.11.3
    elif not bundle_install._SAFE:
        pytest.skip("this Python has no tarfile data filter")
    part = hostile_archive(tmp_path / "bundle.tar.xz.000")
    dest = tmp_path / "unpacked"
    bundle_install.unpack([part], dest)
    for name in MEMBERS:
        st = (dest / name).stat()
        mode = stat.S_IMODE(st.st_mode)
        assert mode & 0o7022 == 0, f"{name}: {mode:04o}"
        assert st.st_uid == os.geteuid(), name
    assert stat.S_IMODE((dest / "venv/bin/tool").stat().st_mode) & 0o100  # still runs


def test_the_sums_to_compare_out_of_band_cover_manifest_and_installer(tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text('{"format": 1}\n')
    (tmp_path / "install.py").write_text("print('install')\n")
    said = write_sums(tmp_path)
    lines = (tmp_path / SUMS).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["bundle.json", "install.py"]
    assert all(line in said for line in lines)
    assert "damage, not tampering" in said and "another channel" in said
