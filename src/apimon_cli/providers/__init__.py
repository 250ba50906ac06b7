"""Gateway adapters: one package per provider (``providers/<name>/``), found through the registry
(``registry``); a provider's SDK is imported only when a command needs that provider.

``Provider``, ``ProviderError`` and ``get_provider`` load on first use: `apimon --help` reads the registry
without loading the provider base (and what it imports).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Provider", "ProviderError", "get_provider"]


def __getattr__(name: str) -> Any:
    if name in ("Provider", "ProviderError"):
        from . import base

        return getattr(base, name)
    if name == "get_provider":
        from .registry import get_provider

        return get_provider
    raise AttributeError(name)
