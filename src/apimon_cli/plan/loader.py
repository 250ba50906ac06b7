"""Plan files -> DesiredState, with every problem reported at its file, line and column.

Stages: read bytes safely -> YAML with positions (``yamlsrc``) -> structure and types (``schema``) ->
merge several files -> cross-field rules and provider capabilities (``checks``) -> model dataclasses.
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..model import (Billing, DesiredState, Package, Pricing, Product, Quota, RateLimit, Subscriber, Target,
                     Tier)
from . import schema as S
from .diagnostics import Diagnostic, PlanError, dotted, suggest
from .yamlsrc import Source, YamlProblem, parse_yaml

MAX_PLAN_BYTES = 16 * 1024 * 1024


@dataclass
class LoadedPlan:
    desired: DesiredState | None
    diagnostics: list[Diagnostic]
    secrets: set[str] = field(default_factory=set)
    sources: list[Source] = field(default_factory=list)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]


def load_plans(paths: list[str], *, strict: bool = False, env: dict[str, str] | None = None) -> LoadedPlan:
    """Load and validate plan files. Never raises for bad input: problems come back as diagnostics."""
    env = dict(os.environ) if env is None else env
    diags: list[Diagnostic] = []
    parsed: list[tuple[Source, S.PlanFile]] = []
    secrets: set[str] = set()
    sources: list[Source] = []
    if not paths:
        return LoadedPlan(None, [Diagnostic("apimon", 0, 0, "error", "", "no plan file given")])
    for path in paths:
        src, file_diags = _load_one(path, env)
        diags.extend(file_diags)
        if src is None:
            continue
        sources.append(src)
        secrets |= src.secrets
        plan = _validate_structure(src, diags)
        if plan is not None and not any(d.file == src.file and d.severity == "error" for d in file_diags):
            parsed.append((src, plan))
    if diags and any(d.severity == "error" for d in diags) or len(parsed) != len(paths):
        return LoadedPlan(None, _sorted(diags), secrets, sources)

    from .checks import check_plan  # cross-field rules; imported here to keep the module graph flat

    desired = _merge(parsed, diags, env)
    if desired is not None:
        diags.extend(check_plan(desired, parsed, env, strict=strict))
    if any(d.severity == "error" for d in diags):
        return LoadedPlan(None, _sorted(diags), secrets, sources)
    return LoadedPlan(desired, _sorted(diags), secrets, sources)


def load_or_raise(paths: list[str], *, strict: bool = False) -> LoadedPlan:
    loaded = load_plans(paths, strict=strict)
    if loaded.desired is None:
        raise PlanError(loaded.errors or loaded.diagnostics)
    return loaded


def _sorted(diags: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(diags, key=lambda d: (d.file, d.line, d.col, d.severity != "error"))


def _load_one(path: str, env: dict[str, str]) -> tuple[Source | None, list[Diagnostic]]:
    def fail(msg: str, line: int = 0, col: int = 0) -> tuple[None, list[Diagnostic]]:
        return None, [Diagnostic(path, line, col, "error", "", msg)]

    p = Path(path)
    try:
        if p.is_dir():
            return fail("is a directory; give a plan file (YAML)")
        size = p.stat().st_size
        if size > MAX_PLAN_BYTES:
            return fail(f"file is {size / 1e6:.1f} MB; plan files up to {MAX_PLAN_BYTES // 2**20} MiB "
                        "are accepted (split it into several files)")
        raw = p.read_bytes()
    except FileNotFoundError:
        return fail("no such file")
    except PermissionError:
        return fail("permission denied")
    except OSError as exc:
        return fail(f"cannot read: {exc.strerror or exc}")
    if b"\x00" in raw[:8192] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return fail("is a binary file, not YAML")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return fail(f"invalid UTF-8 (byte 0x{raw[exc.start]:02x}); plan files must be UTF-8 text", line, col)
    try:
        src, env_problems = parse_yaml(text, path, env)
    except YamlProblem as exc:
        msg = exc.message
        if "\t" in text and "found character '\\t'" in msg:
            msg += "; indent with spaces, not tabs"
        return None, [Diagnostic(path, exc.line, exc.col, "error", dotted(exc.path), msg)]
    diags = [Diagnostic(path, e.line, e.col, "error", dotted(e.path), e.message) for e in env_problems]
    if src.data is None:
        return None, diags + [Diagnostic(path, 1, 1, "error", "", "plan file is empty; "
                                          "it needs at least `apimon: 1` and `products`")]
    if not isinstance(src.data, dict):
        return None, diags + [Diagnostic(path, *src.where(()), "error", "",
                                         f"a plan file must be a mapping of fields; got {_kind(src.data)}")]
    return src, diags


def _kind(value: Any) -> str:
    return S._kind(value)


# ---------------------------------------------------------------- structure errors -> our messages

def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _type_at(loc: tuple) -> Any:
    tp: Any = S.PlanFile
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            f = tp.model_fields.get(part) if isinstance(part, str) else None
            if f is None:
                return None
            tp = f.annotation
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    return _unwrap(tp)


def _allowed_fields(loc: tuple) -> list[str]:
    tp = _type_at(loc)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _validate_structure(src: Source, diags: list[Diagnostic]) -> S.PlanFile | None:
    try:
        return S.PlanFile.model_validate(src.data)
    except ValidationError as exc:
        seen: set = set()
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            key = (loc, err["type"])
            if key in seen:
                continue
            seen.add(key)
            diags.append(_structure_diag(src, loc, err))
        return None


def _structure_diag(src: Source, loc: tuple, err: dict) -> Diagnostic:
    etype = err["type"]
    got = err.get("input")
    path = dotted(loc)
    if etype == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        name = loc[-1]
        line, col = src.where(loc, key=True)
        return Diagnostic(src.file, line, col, "error", path,
                          f"unknown field{suggest(name, allowed)}; allowed: {', '.join(allowed)}")
    line, col = src.where(loc)
    if etype == "missing":
        parent_line, parent_col = src.where(loc[:-1])
        where = dotted(loc[:-1]) or "the plan"
        hint = {"apimon": "; add `apimon: 1` as the first line"}.get(path, "")
        return Diagnostic(src.file, parent_line, parent_col, "error", path,
                          f"required field is missing in {where}{hint}")
    if etype == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        if path == "apimon":
            return Diagnostic(src.file, line, col, "error", path,
                              f"unsupported plan format version {got!r}; this apimon reads format 1")
        return Diagnostic(src.file, line, col, "error", path, f"must be one of {expected}; got {got!r}")
    if etype in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        return Diagnostic(src.file, line, col, "error", path, f"must be a mapping; got {_kind(got)}")
    if etype == "list_type":
        return Diagnostic(src.file, line, col, "error", path, f"must be a list; got {_kind(got)}")
    if etype == "too_short":
        return Diagnostic(src.file, line, col, "error", path, "must list at least one item")
    if etype in ("string_type",):
        return Diagnostic(src.file, line, col, "error", path, f"must be a string; got {_kind(got)}")
    return Diagnostic(src.file, line, col, "error", path, err["msg"])


# ---------------------------------------------------------------- merge and build the model

def _merge(parsed: list[tuple[Source, S.PlanFile]], diags: list[Diagnostic],
           env: dict[str, str]) -> DesiredState | None:
    target: tuple[Source, S.TargetSpec] | None = None
    billing: tuple[Source, S.BillingSpec] | None = None
    products: dict[str, Product] = {}
    subscribers: dict[str, Subscriber] = {}
    where_product: dict[str, Source] = {}
    where_sub: dict[str, Source] = {}

    def once(kind: str, current, src: Source, value):
        if current is None:
            return (src, value)
        if current[1] != value:
            first = current[0]
            fl, _ = first.where((kind,), key=True)
            line, col = src.where((kind,), key=True)
            diags.append(Diagnostic(src.file, line, col, "error", kind,
                                    f"defined differently in {first.file}:{fl}; define `{kind}` in one file"))
        return current

    for src, plan in parsed:
        if plan.target is not None:
            target = once("target", target, src, plan.target)
        if plan.billing is not None:
            billing = once("billing", billing, src, plan.billing)
        for pid, spec in plan.products.items():
            if pid in where_product:
                _dup(diags, "products", pid, where_product[pid], src)
                continue
            where_product[pid] = src
            products[pid] = _product(pid, spec)
        for sid, spec in plan.subscribers.items():
            if sid in where_sub:
                _dup(diags, "subscribers", sid, where_sub[sid], src)
                continue
            where_sub[sid] = src
            key_value = env.get(spec.key.from_env) if spec.key else None
            subscribers[sid] = Subscriber(
                id=sid, product=spec.product, email=spec.email, enabled=spec.enabled, key_value=key_value,
                metadata=tuple(sorted(spec.metadata.items())))
    if target is None:
        src = parsed[0][0]
        diags.append(Diagnostic(src.file, 1, 1, "error", "target",
                                "required field is missing; add `target: {provider: local}` "
                                "(aws | azure | apigee | local)"))
        return None
    tsrc, tspec = target
    settings_model = getattr(tspec, tspec.provider)
    settings = settings_model.model_dump() if settings_model is not None else {}
    b = billing[1] if billing else S.BillingSpec()
    return DesiredState(
        target=Target(provider=tspec.provider, settings=settings,
                      base_dir=str(Path(tsrc.file).resolve().parent)),
        billing=Billing(currency=b.currency, period=b.period, metric=b.metric),
        products=products,
        subscribers=subscribers,
        files=tuple(src.file for src, _ in parsed),
    )


def _dup(diags: list[Diagnostic], kind: str, name: str, first: Source, src: Source) -> None:
    fl, fc = first.where((kind, name), key=True)
    line, col = src.where((kind, name), key=True)
    diags.append(Diagnostic(src.file, line, col, "error", f"{kind}.{name}",
                            f"defined twice: also at {first.file}:{fl}:{fc}; ids must be unique across files"))


def _product(pid: str, spec: S.ProductSpec) -> Product:
    p = spec.pricing
    pricing = Pricing(
        model=p.model, fee=p.fee, setup_fee=p.setup_fee, included=p.included, unit_price=p.unit_price,
        package=Package(p.package.size, p.package.price, p.package.round) if p.package else None,
        tiers=tuple(Tier(t.up_to, t.unit_price, t.flat_fee) for t in (p.tiers or ())),
        minimum=p.minimum, maximum=p.maximum)
    return Product(
        id=pid, display_name=spec.display_name, description=spec.description, apis=tuple(spec.apis),
        rate_limit=RateLimit(spec.rate_limit.rate, spec.rate_limit.burst) if spec.rate_limit else None,
        quota=Quota(spec.quota.limit, spec.quota.period) if spec.quota else None,
        pricing=pricing)
