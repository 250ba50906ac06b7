"""Plan files -> DesiredState, with every problem reported at its file, line and column.

Stages: read bytes safely -> YAML with positions (``yamlsrc``) -> structure and types (``schema``), one product
and one subscriber at a time so that one bad entry does not hide the problems of the others -> merge several
files -> cross-field rules and provider capabilities (``checks``) -> model dataclasses.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..model import (
    Billing,
    ClientSecret,
    DesiredState,
    JwtIssuer,
    Package,
    Pricing,
    Product,
    PushSink,
    Quota,
    RateLimit,
    Subscriber,
    Target,
    Tier,
)
from . import schema as S
from .checks import PlanParts, check_plan
from .diagnostics import Diagnostic, PlanError, closest, dotted, suggest
from .sources import RowSource, postgres_label, read_csv, read_postgresql, resolve_csv
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


@dataclass
class _FilePlan:
    """One file's parts after structure checks; ``None`` marks an entry whose problems are already reported."""

    src: Source | RowSource
    head: S.PlanHead | None
    products: dict[str, S.ProductSpec | None]
    subscribers: dict[str, S.SubscriberSpec | None]
    rows: Iterator[tuple[str, Subscriber | None]] | None = None  # a subscribers_from source, read in _merge


def load_plans(paths: list[str], *, strict: bool = False, env: dict[str, str] | None = None) -> LoadedPlan:
    """Load and validate plan files. Never raises for bad input: problems come back as diagnostics."""
    env = dict(os.environ) if env is None else env
    if not paths:
        return LoadedPlan(
            None, [Diagnostic("apimon", 1, 1, "error", "", "no plan file given; name one or more plan files (YAML)")]
        )
    # Loading builds many small objects and frees none until the end: cyclic GC passes would only cost time
    # (they were half of `apimon validate` on a plan with 10,000 subscribers).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(list(paths), strict, env)
    finally:
        if gc_was_enabled:
            gc.enable()


def load_or_raise(paths: list[str], *, strict: bool = False) -> LoadedPlan:
    loaded = load_plans(paths, strict=strict)
    if loaded.desired is None:
        raise PlanError(loaded.errors or loaded.diagnostics)
    return loaded


def _load(paths: list[str], strict: bool, env: dict[str, str]) -> LoadedPlan:
    diags: list[Diagnostic] = []
    files: list[_FilePlan] = []
    secrets: set[str] = set()
    sources: list[Source] = []
    complete = True  # every file was read and parsed: references between files can be checked
    env_diags: set[Diagnostic] = set()  # values whose ${env:...} failed
    seen: dict[str, str] = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            diags.append(
                Diagnostic(
                    path, 1, 1, "error", "", f"the same file as {seen[real]} (given twice); give each plan file once"
                )
            )
            continue
        seen[real] = path
        src, file_diags = _load_one(path, env)
        diags.extend(file_diags)
        if src is None:
            complete = False
            continue
        sources.append(src)
        secrets |= src.secrets
        env_diags.update(file_diags)
        plan = _validate_file(src, diags)
        files.append(plan)
        if plan.head is not None:
            for i, spec in enumerate(plan.head.subscribers_from):
                source = _data_source(src, i, spec, diags)
                if source is not None:
                    secrets |= source.src.secrets
                    files.append(source)
    parts = _merge(files, diags, env, complete)
    diags.extend(check_plan(parts, env, strict=strict))
    if env_diags:  # a value whose ${env:...} failed is reported once; its other problems are only noise
        failed = {(d.file, d.path) for d in env_diags}
        diags = [d for d in diags if d in env_diags or not _under(d, failed)]
    for src in sources:  # every position is resolved: free the node tree (most of the objects allocated)
        src.release()
    secrets |= {s.key_value for s in parts.subscribers.values() if s.key_value}
    secrets |= {s.client_secret.value for s in parts.subscribers.values() if s.client_secret and s.client_secret.value}
    secrets |= {sink.secret for sink in parts.billing.push if sink.secret}
    events = None
    if parts.events_spec is not None:
        from ..events.config import build as build_events
        from ..events.config import secrets_of

        events = build_events(parts.events_spec, env)
        secrets |= secrets_of(events)
    diags = _finish(diags, secrets)
    if any(d.severity == "error" for d in diags) or parts.target is None:
        return LoadedPlan(None, _sorted(diags, paths), secrets, sources)
    desired = DesiredState(
        target=parts.target,
        billing=parts.billing,
        products=parts.products,
        subscribers=parts.subscribers,
        files=tuple(f.src.file for f in files if isinstance(f.src, Source)),
        data_files=tuple(f.src.file for f in files if isinstance(f.src, RowSource) and f.src.is_file),
        events=events,
        secret_fields=frozenset(
            (path[0], path[1], _field_name(path[2:]))
            for src in sources
            for path in src.secret_paths
            if len(path) >= 3 and path[0] in ("products", "subscribers")
        ),
    )
    from ..security.redact import add_secrets

    add_secrets(secrets)  # never in apimon's debug log or waiting notices either
    return LoadedPlan(desired, _sorted(diags, paths), secrets, sources)


_LONG_QUOTED = re.compile(r"""'((?:[^'\\\n]|\\.){41,}?)'(?=[;,)\s]|$)|"((?:[^"\\\n]|\\.){41,}?)"(?=[;,)\s]|$)""")
MAX_MESSAGE = 1000


def _finish(diags: list[Diagnostic], secrets: set[str]) -> list[Diagnostic]:
    """Every message masked (values from the environment, in every rendering, even cut short) and then
    bounded: a quoted value of more than 40 characters is cut, a message is at most 1,000 characters."""
    from ..render.output import Masker

    masker = Masker(secrets)
    out = []
    for d in diags:
        message = masker.cut(d.message)
        if len(message) > 80:
            message = _LONG_QUOTED.sub(_cut_quoted, message)
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        path = d.path if len(d.path) <= 80 else _LONG_PART.sub(lambda m: m.group(0)[:37] + "...", d.path)
        changed = message != d.message or path != d.path
        out.append(dataclasses.replace(d, message=message, path=path) if changed else d)
    return out


_LONG_PART = re.compile(r"[^.\[\]]{41,}")  # a key of up to 1,024 characters in a field path


def _cut_quoted(m: re.Match) -> str:
    quote = "'" if m.group(1) is not None else '"'
    inner = m.group(1) if m.group(1) is not None else m.group(2)
    return quote + inner[:37] + "..." + quote


def _field_name(rest: tuple) -> str:
    """A plan path under a product or subscriber as the diff's field name: ("pricing", "tiers", 0, "unit_price")
    -> "pricing.tiers" (lists are one field)."""
    parts = []
    for part in rest:
        if isinstance(part, int):
            break
        parts.append(str(part))
    return ".".join(parts)


def _sorted(diags: list[Diagnostic], paths: list[str]) -> list[Diagnostic]:
    """In the order the files were given, then by position, errors before warnings at one position."""
    order = {path: i for i, path in reversed(list(enumerate(paths)))}
    return sorted(diags, key=lambda d: (order.get(d.file, len(order)), d.line, d.col, d.severity != "error"))


# ---------------------------------------------------------------- reading one file


def _load_one(path: str, env: dict[str, str]) -> tuple[Source | None, list[Diagnostic]]:
    def fail(msg: str, line: int = 1, col: int = 1) -> tuple[None, list[Diagnostic]]:
        return None, [Diagnostic(path, line, col, "error", "", msg)]

    p = Path(path)
    try:
        if p.is_dir():
            return fail("is a directory; give plan files, e.g. " + os.path.join(path, "*.yaml"))
        if not p.exists():
            return fail("no such file; give the path of a plan file (YAML)")
        if not p.is_file():
            return fail("is not a regular file; give the path of a plan file (YAML)")
        size = p.stat().st_size
        if size > MAX_PLAN_BYTES:
            return fail(
                f"file is {size / 2**20:.1f} MiB; plan files of up to {MAX_PLAN_BYTES // 2**20} MiB are read "
                "(split the plan into several files)"
            )
        raw = p.read_bytes()
    except PermissionError:
        return fail("permission denied; the plan file must be readable")
    except OSError as exc:
        return fail(f"cannot read the file ({exc.strerror or exc}); give the path of a plan file (YAML)")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return fail("is UTF-16 text; plan files are UTF-8 (re-save the file as UTF-8)")
    nul = raw.find(b"\x00", 0, 8192)
    if nul >= 0:
        line, col = _byte_position(raw, nul)
        return fail("is a binary file (it holds NUL bytes); a plan file is UTF-8 YAML text", line, col)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _byte_position(raw, exc.start)
        return fail(f"invalid UTF-8 (byte 0x{raw[exc.start]:02x}); plan files are UTF-8 text", line, col)
    try:
        src, env_problems = parse_yaml(text, path, env)
    except YamlProblem as exc:
        return None, [Diagnostic(path, exc.line, exc.col, "error", dotted(exc.path), exc.message)]
    diags = [Diagnostic(path, e.line, e.col, "error", dotted(e.path), e.message) for e in env_problems]
    if src.data is None:
        return None, [
            Diagnostic(
                path,
                1,
                1,
                "error",
                "",
                "the plan file is empty; a plan needs at least `apimon: 1`, a target and products",
            )
        ]
    if not isinstance(src.data, dict):
        line, col = src.where(())
        from ..render.output import Masker

        mask = Masker(src.secrets).cut  # the file is not read further: its secrets are masked here
        return None, [
            Diagnostic(
                path,
                line,
                col,
                "error",
                "",
                mask(
                    f"a plan file is a mapping of fields (apimon, target, "
                    # the kind only, never the value: the file may be anything (e.g. named by a crafted saved plan)
                    f"billing, products, subscribers); got {_shape(src.data)}"
                ),
            )
        ]
    return src, diags


def _shape(value) -> str:
    if isinstance(value, str):
        return "text (a single string)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return S._kind(value)  # a list, nothing (null), ...


def _byte_position(raw: bytes, offset: int) -> tuple[int, int]:
    line = raw.count(b"\n", 0, offset) + 1
    start = raw.rfind(b"\n", 0, offset) + 1
    return line, len(raw[start:offset].decode("utf-8", "replace")) + 1


# ---------------------------------------------------------------- subscribers_from: CSV and PostgreSQL


def _data_source(src: Source, i: int, spec: S.SubscriberSourceSpec, diags: list[Diagnostic]) -> _FilePlan | None:
    loc = ("subscribers_from", i)

    def error(message: str, *at) -> None:
        line, col = src.where(loc + at)
        diags.append(Diagnostic(src.file, line, col, "error", dotted(loc + at), message))

    if (spec.csv is None) == (spec.postgresql is None):
        error("give one of csv: FILE or postgresql: URL (with query:)")
        return None
    if spec.csv is not None:
        if spec.query is not None:
            error("query goes with postgresql, not csv", "query")
            return None
        path, shown = resolve_csv(src.file, spec.csv)
        rows_src, rows = read_csv(path, shown, diags)
    else:
        if not spec.query:
            error("postgresql needs query: a SELECT returning id, product, email, enabled, metadata.<key>...")
            return None
        rows_src, rows = read_postgresql(spec.postgresql, spec.query, postgres_label(spec.postgresql), diags)
    return _FilePlan(rows_src, None, {}, {}, rows)


# ---------------------------------------------------------------- structure and types


def _under(d: Diagnostic, paths: set[tuple[str, str]]) -> bool:
    return any(
        d.file == file and path and (d.path == path or d.path.startswith((path + ".", path + "[")))
        for file, path in paths
    )


def _validate_file(src: Source, diags: list[Diagnostic]) -> _FilePlan:
    data: dict = src.data  # type: ignore[assignment]
    head = _validate(S.PlanHead, data, (), src, diags)
    products: dict[str, S.ProductSpec | None] = {}
    subscribers: dict[str, S.SubscriberSpec | None] = {}
    raw_products = data.get("products")
    if isinstance(raw_products, dict):
        for pid, raw in raw_products.items():
            products[pid] = _validate(S.ProductSpec, raw, ("products", pid), src, diags)
    raw_subscribers = data.get("subscribers")
    if isinstance(raw_subscribers, dict):
        for sid, raw in raw_subscribers.items():
            subscribers[sid] = _validate(S.SubscriberSpec, raw, ("subscribers", sid), src, diags)
    return _FilePlan(src, head, products, subscribers)


_M = typing.TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: Any, prefix: tuple, src: Source, diags: list[Diagnostic]) -> _M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    # a misspelt required field is one problem ("unknown field, did you mean X"), not two
    typos = set()
    for err in errors:
        if err["type"] == "extra_forbidden":
            loc = tuple(err["loc"])
            allowed = _allowed_fields(model, loc[:-1])
            special = _SPECIAL_UNKNOWN.get(loc[-1])
            if special and len(loc) >= 2 and loc[-2] == special[0]:
                typos.update(loc[:-1] + (name,) for name in allowed)
            elif (match := closest(loc[-1], allowed)) is not None:
                typos.add(loc[:-1] + (match,))
    seen: set = set()
    for err in errors:
        loc = tuple(err["loc"])
        if (loc, err["type"]) in seen or (err["type"] == "missing" and loc in typos):
            continue
        seen.add((loc, err["type"]))
        diags.append(_structure_diag(src, model, prefix, loc, err))
    return None


# unknown field -> (the mapping it appears in, a better message)
_SPECIAL_UNKNOWN = {
    "value": (
        "key",
        "key values are never written in a plan; name an environment variable that holds the "
        "key instead: key: {from_env: VAR}",
    ),
}


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


def _type_at(model: type[BaseModel], loc: tuple) -> Any:
    tp: Any = model
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


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    tp = _type_at(model, loc)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _structure_diag(src: Source, model: type[BaseModel], prefix: tuple, rel: tuple, err: dict) -> Diagnostic:
    etype = err["type"]
    got = err.get("input")
    loc = prefix + rel
    path = dotted(loc)

    def diag(message: str, *, key: bool = False) -> Diagnostic:
        line, col = src.where(loc, key=key)
        return Diagnostic(src.file, line, col, "error", path, message)

    if etype == "extra_forbidden":
        allowed = _allowed_fields(model, rel[:-1])
        name = rel[-1]
        special = _SPECIAL_UNKNOWN.get(name)
        if special and len(rel) >= 2 and rel[-2] == special[0]:
            return diag(f"unknown field; {special[1]}", key=True)
        return diag(f"unknown field{suggest(name, allowed)}; allowed: {', '.join(allowed)}", key=True)
    if etype == "missing":
        where = dotted(loc[:-1]) or "the plan"
        if path == "apimon":
            return diag("required field is missing; add `apimon: 1` (the format version) as the first line")
        return diag(f"required field is missing from {where}; add `{loc[-1]}:`")
    if etype == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        if path == "apimon" and isinstance(got, str) and got.strip() == "1":
            return diag("must be the number 1, not a string; write `apimon: 1` without quotes")
        if path == "apimon":
            return diag(f"unsupported plan format version {_shown(got)}; this apimon reads format 1 (`apimon: 1`)")
        options = re.findall(r"'([^']*)'", expected)
        hint = suggest(got, options) if isinstance(got, str) else ""
        return diag(f"unknown value {_shown(got)}{hint}; allowed: {', '.join(options) or expected}")
    if etype in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        fields = _allowed_fields(model, rel)
        what = f"a mapping of {', '.join(fields)}" if fields else _MAPPING_OF.get(loc[-1] if loc else "", "a mapping")
        return diag(f"must be {what}; got {S._kind(got)}")
    if etype == "list_type":
        return diag(f"must be a list, e.g. [a, b]; got {S._kind(got)}")
    if etype == "too_short":
        return diag("must list at least one item; got an empty list")
    if etype == "string_type":
        return diag(f"must be a string; got {S._kind(got)}")
    return diag(err["msg"].removeprefix("Value error, "))


def _shown(value: Any) -> str:
    """A scalar as written (`2`, `'year'`), anything else described (`a list`)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return repr(value) if isinstance(value, str) else (getattr(value, "text", None) or repr(value))
    return S._kind(value)


_MAPPING_OF = {
    "products": "a mapping of product id -> product",
    "subscribers": "a mapping of subscriber id -> subscriber",
    "metadata": "a mapping of key -> text",
    "upstreams": "a mapping of API name -> URL",
}


# ---------------------------------------------------------------- merge files and build the model


def _merge(files: list[_FilePlan], diags: list[Diagnostic], env: dict[str, str], complete: bool) -> PlanParts:
    parts = PlanParts(complete=complete, first=files[0].src if files else None)
    target: tuple[Source, S.TargetSpec] | None = None
    billing: tuple[Source, S.BillingSpec] | None = None
    events: tuple[Source, S.EventsSpec] | None = None
    target_given = False

    def once(kind: str, current, src: Source, value):
        if current is None:
            return (src, value)
        if current[1] != value:
            fl, fc = current[0].where((kind,), key=True)
            line, col = src.where((kind,), key=True)
            detail = ""
            if kind == "target" and current[1].provider != value.provider:
                detail = f" (provider {current[1].provider} there, {value.provider} here)"
            diags.append(
                Diagnostic(
                    src.file,
                    line,
                    col,
                    "error",
                    kind,
                    f"defined differently in {current[0].file}:{fl}:"
                    f"{fc}{detail}; define `{kind}` in one file (or identically in each)",
                )
            )
        return current

    for f in files:
        src = f.src
        target_given = target_given or "target" in src.data  # type: ignore[operator]
        if f.head is not None and f.head.target is not None:
            target = once("target", target, src, f.head.target)
        if f.head is not None and f.head.billing is not None:
            billing = once("billing", billing, src, f.head.billing)
        if f.head is not None and f.head.events is not None:
            events = once("events", events, src, f.head.events)
        for pid, spec in f.products.items():
            if ("products", pid) in parts.owner:
                _dup(diags, "products", pid, parts.owner[("products", pid)], src)
                continue
            parts.owner[("products", pid)] = src
            if spec is not None:
                parts.products[pid] = _product(pid, spec)
                parts.product_specs[pid] = spec
        for sid, sub in f.rows or ():
            if ("subscribers", sid) in parts.owner:
                _dup(diags, "subscribers", sid, parts.owner[("subscribers", sid)], src)
                continue
            parts.owner[("subscribers", sid)] = src
            if sub is not None:
                parts.subscribers[sid] = sub
                parts.subscriber_specs[sid] = _DATA_SPEC
        for sid, spec in f.subscribers.items():
            if ("subscribers", sid) in parts.owner:
                _dup(diags, "subscribers", sid, parts.owner[("subscribers", sid)], src)
                continue
            parts.owner[("subscribers", sid)] = src
            if spec is not None:
                key_value = env.get(spec.key.from_env) if spec.key and spec.key.from_env else None
                secret = env.get(spec.client_secret.from_env) if spec.client_secret else None
                parts.subscribers[sid] = Subscriber(
                    id=sid,
                    product=spec.product,
                    email=spec.email,
                    enabled=spec.enabled,
                    key_value=key_value,
                    metadata=tuple(sorted(spec.metadata.items())),
                    client_secret=ClientSecret(secret) if secret else None,
                    client_cert_sha256=spec.client_cert_sha256,
                )
                parts.subscriber_specs[sid] = spec
    for sid, spec in parts.subscriber_specs.items():  # after every file: the product may be in another one
        lifecycle = _key_lifecycle(spec, parts.product_specs.get(spec.product))
        if lifecycle and sid in parts.subscribers:
            parts.subscribers[sid] = dataclasses.replace(parts.subscribers[sid], **lifecycle)
    if target is not None:
        tsrc, tspec = target
        parts.owner[("target", "")] = tsrc
        settings_model = getattr(tspec, tspec.provider)
        parts.target = Target(
            provider=tspec.provider,
            settings=settings_model.model_dump() if settings_model is not None else {},
            base_dir=str(Path(tsrc.file).resolve().parent),
        )
        parts.target_spec = tspec
    elif complete and files and not target_given:
        src = files[0].src
        diags.append(
            Diagnostic(
                src.file,
                1,
                1,
                "error",
                "target",
                "required field is missing; add `target: {provider: "
                "local}` to one plan file (provider: aws | azure | apigee | local)",
            )
        )
    if events is not None:
        parts.owner[("events", "")] = events[0]
        parts.events_spec = events[1]
    if billing is not None:
        parts.owner[("billing", "")] = billing[0]
        b = billing[1]
        parts.billing = Billing(
            currency=b.currency, period=b.period, metric=b.metric, push=_push_sinks(billing[0], b.push, env)
        )
        parts.billing_spec = b
    return parts


_METADATA_PREFIX = "metadata."
_DATA_SPEC = S.SubscriberSpec(product="-")  # what the checks ask of a data source's row: it names no key


def _push_sinks(src: Source, spec: S.PushSpec | None, env: dict[str, str]) -> tuple[PushSink, ...]:
    """The billing.push blocks as model sinks; their rules are checked in ``checks._check_push``."""
    if spec is None:
        return ()

    def meta(path: str | None) -> str | None:
        return path[len(_METADATA_PREFIX):] if path and path.startswith(_METADATA_PREFIX) else path

    def where(vendor: str) -> str:
        line, col = src.where(("billing", "push", vendor), key=True)
        return f"{src.file}:{line}:{col}"

    sinks = []
    if spec.stripe is not None:
        s = spec.stripe
        sinks.append(PushSink("stripe", s.api_base, s.event_name, meta(s.customer), s.api_key.from_env,
                              env.get(s.api_key.from_env), field="value", where=where("stripe")))
    if spec.lago is not None:
        s = spec.lago
        sinks.append(PushSink("lago", s.api_url, s.metric_code, meta(s.subscription), s.api_key.from_env,
                              env.get(s.api_key.from_env), field=s.field, where=where("lago")))
    if spec.openmeter is not None:
        s = spec.openmeter
        sinks.append(PushSink("openmeter", s.url, s.type, meta(s.subject), s.token.from_env,
                              env.get(s.token.from_env), field=s.field, source=s.source, where=where("openmeter")))
    return tuple(sinks)


def _dup(diags: list[Diagnostic], kind: str, name: str, first: Source, src: Source) -> None:
    fl, fc = first.where((kind, name), key=True)
    line, col = src.where((kind, name), key=True)
    what = "product" if kind == "products" else "subscriber"
    diags.append(
        Diagnostic(
            src.file,
            line,
            col,
            "error",
            f"{kind}.{name}",
            f"{what} {name!r} is defined twice, here and "
            f"at {first.file}:{fl}:{fc}; ids must be unique across all plan files",
        )
    )


def _product(pid: str, spec: S.ProductSpec) -> Product:
    p = spec.pricing
    pricing = Pricing(
        model=p.model,
        fee=p.fee,
        setup_fee=p.setup_fee,
        included=p.included,
        unit_price=p.unit_price,
        package=Package(p.package.size, p.package.price, p.package.round) if p.package else None,
        tiers=tuple(Tier(t.up_to, t.unit_price, t.flat_fee) for t in (p.tiers or ())),
        minimum=p.minimum,
        maximum=p.maximum,
    )
    return Product(
        id=pid,
        display_name=spec.display_name,
        description=spec.description,
        apis=tuple(spec.apis),
        rate_limit=RateLimit(spec.rate_limit.rate, spec.rate_limit.burst) if spec.rate_limit else None,
        quota=Quota(spec.quota.limit, spec.quota.period) if spec.quota else None,
        pricing=pricing,
        max_concurrent=spec.max_concurrent,
        public=spec.public,
        **_auth(spec),
    )


def _auth(spec: S.ProductSpec) -> dict:
    """products.<id>.auth and scopes -> Product fields (the defaults are left out)."""
    from ..keys.durations import parse_duration

    out: dict = {}
    if spec.auth is not None:
        schemes: list[str] = []
        for entry in spec.auth:
            if entry.scheme not in schemes:
                schemes.append(entry.scheme)
            if entry.jwt is not None:
                j = entry.jwt
                out["jwt"] = JwtIssuer(j.issuer, j.jwks_uri, j.audience, j.subscriber_claim)
            if entry.oauth2 is not None and entry.oauth2.token_ttl:
                out["token_ttl"] = int(parse_duration(entry.oauth2.token_ttl).total_seconds())
        out["auth"] = tuple(sorted(schemes, key=S.AUTH_SCHEMES.index))
    if spec.scopes:
        out["scopes"] = tuple(sorted(set(spec.scopes)))
    return out


def _key_lifecycle(spec, product_spec) -> dict:
    """key.max_age and key.overlap of a subscriber, with its product's key block as the default."""
    from ..keys.durations import parse_duration

    own = spec.key
    prod = getattr(product_spec, "key", None)
    max_age = (own and own.max_age) or (prod and prod.max_age)
    overlap = (own and own.overlap) or (prod and prod.overlap)
    out: dict = {}
    if max_age:
        out["key_max_age"] = parse_duration(max_age)
    if overlap:
        out["key_overlap"] = parse_duration(overlap)
    return out
