"""Off the daemon's path: the CPU vLLM engine venv, tiny local models, the demo."""
