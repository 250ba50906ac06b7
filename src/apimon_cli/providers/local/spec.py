"""The local target's registry entry: everything it stores, its state directory as its ledger target."""

from __future__ import annotations

from ..registry import ImportOption, ProviderSpec


def _target_id(settings: dict, base_dir: str) -> str:
    from .state import database_identity, state_dir_from

    if settings.get("database"):  # the same target from every host: the database, without its password
        return database_identity(settings["database"])
    return str(state_dir_from(settings, base_dir).resolve())


RESERVED_APIS = ("oauth2", ".well-known")  # the gateway's own endpoints (gateway/oauth.py)


def plan_checks(parts, r) -> None:
    for pid, product in parts.products.items():
        for i, api in enumerate(product.apis):
            if api in RESERVED_APIS:
                r.error(("products", pid, "apis", i), f"the local gateway answers /{api}/ itself (OAuth 2.0 "
                        "endpoints); name the API otherwise")


SPEC = ProviderSpec(
    name="local",
    summary="a local gateway state in SQLite, served by `apimon gateway serve`",
    provider="apimon_cli.providers.local.provider:LocalProvider",
    settings="apimon_cli.providers.local.settings:LocalTarget",
    target_id=_target_id,
    import_options=(ImportOption("--state-dir", "state_dir", "state directory", default=".apimon"),
                    ImportOption("--database", "database", "PostgreSQL URL of a local state kept in PostgreSQL")),
    doctor="apimon_cli.providers.local.doctor:checks",
    plan_checks=plan_checks,
)
