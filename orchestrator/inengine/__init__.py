"""Code that runs in the engine's Python: standard library only, for vLLM's oldest Python."""
