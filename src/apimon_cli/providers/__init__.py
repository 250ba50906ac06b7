"""Gateway adapters, one module per provider, imported only when a command needs that provider."""

from __future__ import annotations

import importlib

from ..model import DesiredState
from .base import Provider, ProviderError

_MODULES = {
    "local": ("apimon_cli.providers.local", "LocalProvider"),
    "aws": ("apimon_cli.providers.aws", "AwsProvider"),
    "azure": ("apimon_cli.providers.azure", "AzureProvider"),
    "apigee": ("apimon_cli.providers.apigee", "ApigeeProvider"),
}


def get_provider(desired: DesiredState) -> Provider:
    name = desired.target.provider
    module_name, cls_name = _MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("apimon_cli"):
            raise ProviderError(f"provider {name} is not available in this version of apimon") from None
        raise ProviderError(f"provider {name} needs the Python package {exc.name!r}; "
                            f"reinstall apimon with its dependencies") from None
    return getattr(module, cls_name)(desired)


__all__ = ["Provider", "ProviderError", "get_provider"]
