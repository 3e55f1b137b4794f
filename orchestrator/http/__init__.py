"""The control plane's HTTP surface: REST API, tokens, guard, Prometheus page, dashboard."""
