"""Gateway adapters: one package per provider (``providers/<name>/``), found through the registry
(``registry``); a provider's SDK is imported only when a command needs that provider."""

from __future__ import annotations

from .base import Provider, ProviderError
from .registry import get_provider

__all__ = ["Provider", "ProviderError", "get_provider"]
