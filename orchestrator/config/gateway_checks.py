"""Rules that join [gateway] and the models: unique served names to route by, engines that only
the gateway reaches, and engines still reachable around it."""

from __future__ import annotations

from orchestrator.config.settings import Config, is_loopback, parse_listen


def served_name(cfg: Config, name: str) -> str:
    """What clients send as `model` for model `name` (vLLM's --served-model-name)."""
    return cfg.models[name].served_model_name or name


def served_name_clashes(cfg: Config, gateway_on: str) -> list[str]:
    """Models sharing one served name, which a gateway routing by that name cannot tell apart;
    `gateway_on` names the setting that turned the gateway on."""
    errors: list[str] = []
    by_served: dict[str, str] = {}
    for name in sorted(cfg.models):
        served = served_name(cfg, name)
        if served in by_served:
            errors.append(
                f"models.{name}.served_model_name: {served!r} is also served by "
                f"models.{by_served[served]}; the gateway routes by this name, so each model "
                f"needs its own while {gateway_on}"
            )
        by_served.setdefault(served, name)
    return errors


def gateway_errors(cfg: Config) -> list[str]:
    errors: list[str] = []
    g = cfg.gateway
    if not g.enabled:
        if g.gateway_only:
            errors.append(
                "gateway.gateway_only: every engine would listen on 127.0.0.1 only, but the "
                "gateway is off, so no student could reach one; set enabled = true under [gateway]"
            )
        errors.extend(
            f"models.{name}.gateway_only: the engine would listen on 127.0.0.1 only, but the "
            "gateway is off ([gateway] enabled = false), so no student could reach it"
            for name, m in sorted(cfg.models.items())
            if m.gateway_only
        )
        return errors
    errors += served_name_clashes(cfg, "[gateway] enabled = true")
    port = parse_listen(g.listen)[1]
    if port == cfg.orchestrator.listen_port:
        errors.append(f"gateway.listen: port {port} is the control plane's (orchestrator.listen)")
    errors.extend(
        f"gateway.listen: port {port} is also models.{name}.port"
        for name, m in sorted(cfg.models.items())
        if m.port == port
    )
    for name, m in sorted(cfg.models.items()):
        if cfg.gateway_only(name) and "host" in m.model_fields_set and not is_loopback(m.host):
            errors.append(
                f"models.{name}.host: {m.host} contradicts gateway_only, which binds the engine "
                "to 127.0.0.1; remove one of them"
            )
    return errors


def gateway_warnings(cfg: Config) -> list[str]:
    """Engines a client can still reach around the gateway (and its keys and limits)."""
    if not cfg.gateway.enabled:
        return []
    return [
        f"models.{name}: reachable directly on {m.host}:{m.port}, around the gateway; "
        "set gateway_only = true in its table (or under [gateway] for every model) to "
        "make the gateway the only way in"
        for name, m in sorted(cfg.models.items())
        if not cfg.gateway_only(name) and not is_loopback(m.host)
    ]
