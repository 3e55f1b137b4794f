"""The control surface: REST API, tokens, Prometheus page, the daemon and systemd notify."""
