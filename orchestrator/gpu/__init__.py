"""The GPU side: NVML and its topology-driven fake, the inventory of slices, telemetry."""
