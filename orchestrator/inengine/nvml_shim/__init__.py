"""The MIG NVML fix as it runs in the engine: this folder goes first on the engine's PYTHONPATH."""
