"""The MIG NVML fix for vLLM engines: the daemon arms it through an engine's environment (here).

What runs inside the engine is orchestrator/inengine/nvml_shim/ (standard library only); the
daemon puts that folder first on the engine's PYTHONPATH.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.config import VllmSettings
from orchestrator.gpu.inventory import Slice
from orchestrator.inengine import nvml_shim
from orchestrator.inengine.nvml_shim.mig_orchestrator_nvml_shim import UUID_ENV

SHIM_DIR = Path(nvml_shim.__file__).resolve().parent


def fix_status(slc: Slice | None, settings: VllmSettings) -> str:
    """Whether an engine on `slc` gets the fix, in words for `plan`."""
    if slc is None:
        return "-"
    if not slc.is_mig:
        return "off (whole GPU)"
    return "off (mig_nvml_fix = false)" if settings.mig_nvml_fix is False else "on"


def fix_env(slc: Slice | None, settings: VllmSettings, pythonpath: str | None) -> dict[str, str]:
    """Variables that arm the fix for an engine on a MIG slice; none for anything else.

    `pythonpath` is the PYTHONPATH the engine would have had; it stays, after the fix's folder.
    """
    if slc is None or fix_status(slc, settings) != "on":
        return {}
    return {
        "PYTHONPATH": os.pathsep.join([str(SHIM_DIR), *([pythonpath] if pythonpath else [])]),
        UUID_ENV: slc.uuid,
    }
