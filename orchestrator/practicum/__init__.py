"""The course's practicum: measurements of vLLM on this host's engines, and their report."""
