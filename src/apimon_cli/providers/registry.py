"""The provider registry: every gateway apimon can target, each declared by its own package.

A provider is one package, ``providers/<name>/``, whose ``spec.py`` defines ``SPEC = ProviderSpec(...)``:
its settings model (the pydantic block the plan schema embeds as ``target.<name>``), its capabilities
(what it stores, what a change replaces), its plan checks, its ``apimon import`` options and its ledger
target id. The plan schema, the plan checks and the CLI read these and name no provider.

``spec.py`` is imported for `apimon --help` and `apimon validate`, so it imports nothing heavy: the settings
model and the provider class are named as ``"module:attribute"`` and imported when needed, and the SDK is
imported by the provider's own modules only when the provider is instantiated.

Adding a provider: its package, then its name in ``PACKAGES`` below (the order is the order of the docs and
messages: "aws | azure | apigee | local").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from ..reconcile.changes import Replacement

if TYPE_CHECKING:
    from ..model import DesiredState
    from .base import Provider

PACKAGES = ("aws", "azure", "apigee", "local")


@dataclass(frozen=True)
class NotStored:
    """A field the gateway does not keep: never compared, and (with ``warning``) a validation warning where a
    plan sets it. One declaration serves both, so they cannot disagree."""

    kind: str  # "product" | "subscriber"
    field: str  # a flattened field ("email", "rate_limit.burst") or a prefix ("pricing.*", "metadata.*")
    #: the validation warning (without "<provider>: "), or a function of the resource giving it; None: not
    #: worth one
    warning: str | Callable[[Any], str] | None = None
    why: str = ""  # without a warning: why none is needed (for the docs)
    keeps: tuple[str, ...] = ()  # fields under the prefix that ARE stored ("metadata.customer_id")
    warn_when: Callable[[Any], bool] | None = None  # default: the resource sets the field
    once: bool = False  # warn at the first resource that sets it, counting the others

    def covers(self, name: str) -> bool:
        if name in self.keeps:
            return False
        if self.field.endswith(".*"):
            return name.startswith(self.field[:-1])
        return name == self.field

    @property
    def path(self) -> tuple[str, ...]:
        """Where the warning points, relative to the resource."""
        return tuple(self.field.removesuffix(".*").split("."))

    def message(self, resource: Any) -> str:
        return self.warning(resource) if callable(self.warning) else str(self.warning)

    def is_set_on(self, resource: Any) -> bool:
        from ..reconcile.kinds import kind

        if self.warn_when is not None:
            return bool(self.warn_when(resource))
        return any(self.covers(name) and value not in (None, "", ())
                   for name, value in kind(self.kind).fields(resource).items())


@dataclass(frozen=True)
class Partly(NotStored):
    """A field the gateway keeps only in part: it IS compared (the provider's ``canonical`` gives the part it
    keeps, e.g. the credential schemes a gateway can express), and the plan gets ``warning`` where it asks for
    the part that is lost. Listed in ``Capabilities.partly``, never in ``not_stored``."""


def _listed(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


#: why a scheme cannot be expressed on a cloud gateway, as the warnings say it
_WHY_NOT = {
    "oauth2": "it issues no OAuth 2.0 client-credentials tokens",
    "jwt": "it cannot validate bearer tokens of an external issuer",
    "mtls": "it does not check client certificates per subscriber",
}


def _scheme_gap(cls: type, gateway: str, unsupported: tuple[str, ...], why_not: dict[str, str] | None,
                covered_by: dict[str, str] | None = None) -> NotStored:
    reasons = {**_WHY_NOT, **(why_not or {})}
    covered = covered_by or {}

    def lost(p: Any) -> list[str]:
        return [s for s in p.auth if s in unsupported and not (s in covered and covered[s] in p.auth)]

    def warning(p: Any) -> str:
        names = lost(p)
        why = "; ".join(f"{s}: {reasons[s]}" for s in names)
        them = "it is" if len(names) == 1 else "they are"
        return (f"auth lists {_listed(names)}, which {gateway} cannot express ({why}); {them} enforced by "
                "`apimon gateway serve` (local target) only")

    return cls("product", "auth", warn_when=lambda p: bool(lost(p)), warning=warning)


def auth_not_stored(gateway: str, unsupported: tuple[str, ...], *, keeps: tuple[str, ...] = (),
                    keeps_scopes: bool = False, keeps_secret: bool = False,
                    why_not: dict[str, str] | None = None) -> tuple[NotStored, ...]:
    """What a gateway cannot keep of ``products.<id>.auth`` (it cannot express the schemes in
    ``unsupported``), ``scopes``, and the subscribers' ``client_secret`` / ``client_cert_sha256``.

    ``keeps``: the auth fields it does keep: "auth" (the schemes it can express, compared as the provider's
    ``canonical`` gives them; the warning about the others is then ``auth_partly``'s), "auth.jwt.issuer"...
    The warning names the schemes the product lists that the gateway cannot express, and why (``why_not``
    overrides the reasons)."""
    out: list[NotStored] = [] if "auth" in keeps else [_scheme_gap(NotStored, gateway, unsupported, why_not)]
    out.append(NotStored("product", "auth.*", keeps=tuple(k for k in keeps if k.startswith("auth.")),
                         why=f"{gateway} keeps no other token settings on a product"))
    out.append(NotStored("subscriber", "client_cert_sha256",
                         why="client certificates are checked by the local gateway only"))
    if not keeps_scopes:
        out.append(NotStored("product", "scopes", warn_when=lambda p: bool(p.scopes),
                             warning=f"token scopes cannot be expressed on {gateway}; they are not checked there"))
    if not keeps_secret:
        out.append(NotStored("subscriber", "client_secret", why=f"{gateway} has no client secrets"))
    return tuple(out)


def auth_partly(gateway: str, unsupported: tuple[str, ...], *, why_not: dict[str, str] | None = None,
                covered_by: dict[str, str] | None = None) -> tuple[Partly, ...]:
    """For a gateway that keeps "auth" (``auth_not_stored(..., keeps=("auth", ...))``): the warning about the
    schemes it cannot express, while the ones it can are compared. ``covered_by``: a scheme that is not lost
    when another one is listed too ({"oauth2": "jwt"}: the jwt issuer issues the client-credentials tokens)."""
    return (_scheme_gap(Partly, gateway, unsupported, why_not, covered_by),)  # type: ignore[return-value]


@dataclass(frozen=True)
class Capabilities:
    not_stored: tuple[NotStored, ...] = ()
    replacements: tuple[Replacement, ...] = ()
    #: fields kept only in part: compared, with a validation warning where the plan asks for the lost part
    partly: tuple[Partly, ...] = ()

    def warnings(self) -> tuple[NotStored, ...]:
        """Every declaration that may warn at validation (``apimon validate``; ``--strict``: errors)."""
        return tuple(g for g in (*self.not_stored, *self.partly) if g.warning is not None)

    def stores(self, kind: str, name: str) -> bool:
        return not any(n.kind == kind and n.covers(name) for n in self.not_stored)

    def replacement(self, kind: str, fields: Iterable[str]) -> Replacement | None:
        names = set(fields)
        return next((r for r in self.replacements if r.kind == kind and r.field in names), None)


@dataclass(frozen=True)
class ImportOption:
    """An `apimon import` option of this provider; providers may share a flag (``--endpoint``)."""

    flag: str  # "--region"
    setting: str  # the settings key it fills: "region"
    help: str
    required: bool = False
    multiple: bool = False  # repeatable; the setting is a list
    default: Any = None  # the setting when the option is not given (None: left out)
    choices: tuple[str, ...] = ()  # the allowed values, checked by the parser and shown in help


@dataclass(frozen=True)
class ProviderSpec:
    name: str  # "aws": target.provider, the settings block target.aws, the ledger's provider column
    summary: str  # one line for help texts
    provider: str  # "module:Class" of the Provider subclass, imported when a command needs the gateway
    settings: str  # "module:Model" of the pydantic settings block, imported by the plan schema
    target_id: Callable[[dict, str], str]  # (settings, plan directory) -> the ledger's target id, offline
    capabilities: Capabilities = field(default_factory=Capabilities)
    plan_checks: Callable[[Any, Any], None] | None = None  # (planfile.checks.PlanParts, reporter): offline
    import_options: tuple[ImportOption, ...] = ()
    #: the URLs of the settings that receive a credential: settings -> [(field, url, public default)], for
    #: the endpoint rule (``security.endpoints``; checked offline by `apimon validate`)
    credential_urls: Callable[[dict], list[tuple[str, str, str | None]]] | None = None
    doctor: str | None = None  # "module:function" yielding `apimon doctor`'s checks (providers.diagnose)

    def provider_class(self) -> type[Provider]:
        return _load(self.provider)

    def settings_model(self) -> type:
        return _load(self.settings)

    def required_settings(self) -> list[str]:
        return [n for n, f in self.settings_model().model_fields.items() if f.is_required()]


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@cache
def specs() -> dict[str, ProviderSpec]:
    """Every provider's spec, by name, in ``PACKAGES`` order."""
    out = {}
    for package in PACKAGES:
        s = importlib.import_module(f"{__package__}.{package}.spec").SPEC
        out[s.name] = s
    return out


def names() -> list[str]:
    return list(specs())


def spec(name: str) -> ProviderSpec:
    try:
        return specs()[name]
    except KeyError:
        from .base import ProviderError

        raise ProviderError(f"unknown provider {name!r}; known: {', '.join(names())}") from None


def get_provider(desired: DesiredState) -> Provider:
    """The provider of the plan's target, instantiated (this imports its SDK)."""
    from .base import ProviderError

    name = desired.target.provider
    try:
        cls = spec(name).provider_class()
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("apimon_cli"):
            raise ProviderError(f"provider {name} is not available in this version of apimon") from None
        raise ProviderError(f"provider {name} needs the Python package {exc.name!r}; "
                            f"reinstall apimon with its dependencies") from None
    from .transport import watch

    watch.reset_budget()  # one provider per command run: its retries get the whole budget
    return cls(desired)
