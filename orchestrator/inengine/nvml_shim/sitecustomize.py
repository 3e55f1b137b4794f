"""mig-orchestrator: arm the MIG NVML fix in this Python process of a vLLM engine.

The daemon puts this folder first on PYTHONPATH only for an engine on a MIG slice, so every Python
process vLLM starts (API server, EngineCore, model-inspection subprocess) runs this at start-up.
It shadows any other sitecustomize, so it runs that one afterwards.
"""

import importlib.machinery
import importlib.util
import os
import sys

import mig_orchestrator_nvml_shim


def _run_shadowed() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


mig_orchestrator_nvml_shim.install()
_run_shadowed()
