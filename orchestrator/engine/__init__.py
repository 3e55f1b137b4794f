"""One engine's life: its argv and environment, its process tree, its log, its health probe."""
