"""The local target: a gateway state in SQLite (``state``), its provider (``provider``), its registry entry
(``spec``). ``apimon gateway serve`` (``apimon_cli.gateway``) serves the same state; it reaches it through
``connect_state`` and ``state_dir_of``, importable from here."""

from .state import connect_state, state_dir_of

__all__ = ["connect_state", "state_dir_of"]


def __getattr__(name: str):
    # the provider imports the plan-file package (pydantic); the gateway needs only the state
    if name == "LocalProvider":
        from .provider import LocalProvider

        return LocalProvider
    raise AttributeError(name)
