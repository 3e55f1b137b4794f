"""mig-orchestrator: supervised per-student vLLM endpoints on the MIG slices of a GPU server."""

__version__ = "0.1.0"
