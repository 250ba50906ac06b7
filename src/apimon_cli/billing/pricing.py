"""Charge lines for one product's pricing and one period's billable quantity (Stripe Billing's semantics).

Pure functions, ``Decimal`` end to end. Every line amount is computed exactly (a private context with
100 digits of precision that traps any inexact result) and then rounded once, ``ROUND_HALF_UP``, to the
currency's minor unit; the invoice total is the sum of the rounded lines.

Lines, in this order:

- ``fee``: the recurring ``fee`` (this is also the whole charge of the ``flat`` model).
- ``setup_fee``: ``setup_fee``, only when ``first_period``.
- ``usage``: what the model charges for the quantity left after ``included``:
    * free: one zero line that shows the quantity ("Usage (free)").
    * per_unit: one line, quantity x unit_price (also at quantity 0, amount 0).
    * package: one line whose quantity is the number of packages and unit_price the package price.
    * graduated: one line per tier reached (its units at its unit price), and one "Flat fee" line per
      reached tier that has a flat fee. At quantity 0 the first tier is reached with 0 units (Stripe bills
      its flat fee).
    * volume: one line for all units at the unit price of the tier containing the quantity, plus that
      tier's flat fee line (quantity 0 falls in the first tier).
    * stairstep: one line carrying the flat fee of the tier containing the quantity; nothing at 0.
  When ``included`` took units away, the first usage line says how many were used and included.
- ``minimum``: lifts the recurring total (fee + usage; the one-off setup fee does not count toward a
  commitment) to ``minimum``.
- ``maximum``: a negative line that brings the recurring total (fee + usage) down to ``maximum`` (the fee
  too, when it alone exceeds it: ``fee: 100``, ``maximum: 60`` invoices 60.00); the setup fee is not capped.

Descriptions are short and built from strings prepared once per pricing ("Usage 1,000,001–5,000,000 @
0.0005", "Flat fee, tier 1–1,000", "Minimum commitment 250.00").
"""

from __future__ import annotations

from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from typing import NamedTuple

from apimon_cli.billing.currency import quantum
from apimon_cli.billing.lines import InvoiceLine
from apimon_cli.model import Pricing

# Exact arithmetic: anything that would need rounding raises instead of silently losing a digit.
_EXACT = Context(
    prec=100, rounding=ROUND_HALF_UP, traps=[Inexact, InvalidOperation, Overflow, DivisionByZero]
)
# Rounding a line once to the currency's minor unit.
_ROUND = Context(prec=100, rounding=ROUND_HALF_UP, traps=[InvalidOperation])
_ZERO = Decimal(0)
_MODELS = ("free", "flat", "per_unit", "package", "graduated", "volume", "stairstep")


def charge_lines(pricing: Pricing, quantity: int, currency: str, *, first_period: bool) -> list[InvoiceLine]:
    """The invoice lines ``pricing`` charges for ``quantity`` billable units in one period."""
    compiled = compile_pricing(pricing)
    q = quantum(currency)
    lines = base_lines(compiled, quantity, currency, q, first_period=first_period)
    apply_bounds(compiled, lines, currency, q)
    return lines


# --- building blocks shared with invoice.build_invoices ---------------------------------------------------


class _Tier(NamedTuple):
    first: int  # first unit of the tier (1-based)
    last: int | None  # inclusive; None = infinity
    unit_price: Decimal | None
    flat_fee: Decimal | None
    price_text: str  # "0.0005"
    range_text: str  # "1,000,001–5,000,000" or "5,000,001+"


class CompiledPricing(NamedTuple):
    """A validated ``Pricing`` with its description fragments prepared once."""

    pricing: Pricing
    tiers: tuple[_Tier, ...]
    unit_price_text: str


_CACHE: dict[int, CompiledPricing] = {}


def compile_pricing(pricing: Pricing) -> CompiledPricing:
    """Validate ``pricing`` and prepare it for repeated pricing (cached per object)."""
    hit = _CACHE.get(id(pricing))
    if hit is not None and hit.pricing is pricing:
        return hit
    compiled = _compile(pricing)
    if len(_CACHE) > 4096:
        _CACHE.clear()
    _CACHE[id(pricing)] = compiled
    return compiled


def base_lines(
    compiled: CompiledPricing,
    quantity: int,
    currency: str,
    q: Decimal,
    *,
    first_period: bool,
    usage_only: bool = False,
    label: str = "",
) -> list[InvoiceLine]:
    """Fee, setup fee and usage lines (no minimum/maximum). ``label`` prefixes usage descriptions."""
    if quantity < 0:
        raise ValueError(f"billable quantity must be >= 0; got {quantity}")
    p = compiled.pricing
    lines: list[InvoiceLine] = []
    if not usage_only:
        if p.fee is not None:
            lines.append(InvoiceLine("fee", "Recurring fee", None, None, _round(p.fee, q), currency))
        if first_period and p.setup_fee is not None:
            lines.append(InvoiceLine("setup_fee", "Setup fee", None, None, _round(p.setup_fee, q), currency))
    n = quantity - p.included if quantity > p.included else 0
    start = len(lines)
    _usage(compiled, n, currency, q, lines, label)
    if p.included and len(lines) > start:
        first = lines[start]
        note = f" ({quantity:,} used, {min(quantity, p.included):,} included)"
        lines[start] = InvoiceLine(
            first.line_type,
            first.description + note,
            first.quantity,
            first.unit_price,
            first.amount,
            currency,
        )
    return lines


def apply_bounds(compiled: CompiledPricing, lines: list[InvoiceLine], currency: str, q: Decimal) -> None:
    """Append the ``minimum`` true-up or ``maximum`` discount line for ``lines`` (setup fee excluded)."""
    p = compiled.pricing
    if p.minimum is None and p.maximum is None:
        return
    recurring = _ZERO
    usage = _ZERO
    for line in lines:
        if line.line_type == "usage":
            usage = _EXACT.add(usage, line.amount)
            recurring = _EXACT.add(recurring, line.amount)
        elif line.line_type == "fee":
            recurring = _EXACT.add(recurring, line.amount)
    if p.maximum is not None and recurring > p.maximum:
        # caps the whole recurring charge (fee + usage) at the maximum, as documented: a fee above the
        # maximum is discounted too (issue 20.8); the one-off setup fee is neither counted nor capped
        discount = _round(_EXACT.subtract(recurring, p.maximum), q)
        if discount > 0:
            what = "usage capped" if discount <= usage else "fee and usage capped"
            text = f"Maximum charge {_fmt(p.maximum)} ({what})"
            lines.append(InvoiceLine("maximum", text, None, None, _EXACT.minus(discount), currency))
    elif p.minimum is not None and recurring < p.minimum:
        topup = _round(_EXACT.subtract(p.minimum, recurring), q)
        if topup > 0:
            text = f"Minimum commitment {_fmt(p.minimum)}"
            lines.append(InvoiceLine("minimum", text, None, None, topup, currency))


# --- internals ----------------------------------------------------------------------------------------------


def _round(amount: Decimal, q: Decimal) -> Decimal:
    return amount.quantize(q, context=_ROUND)


def _fmt(value: Decimal) -> str:
    return format(value, ",f")


def _usage(c: CompiledPricing, n: int, currency: str, q: Decimal, out: list[InvoiceLine], label: str) -> None:
    p = c.pricing
    model = p.model
    if model == "per_unit":
        amount = _round(_EXACT.multiply(p.unit_price, n), q)
        out.append(
            InvoiceLine("usage", f"{label}Usage @ {c.unit_price_text}", n, p.unit_price, amount, currency)
        )
    elif model == "graduated":
        _graduated(c, n, currency, q, out, label)
    elif model == "volume":
        tier = _tier_of(c.tiers, n)
        if tier.unit_price is not None:
            amount = _round(_EXACT.multiply(tier.unit_price, n), q)
            text = f"{label}Usage @ {tier.price_text} (volume tier {tier.range_text})"
            out.append(InvoiceLine("usage", text, n, tier.unit_price, amount, currency))
        if tier.flat_fee is not None:
            text = f"{label}Flat fee, volume tier {tier.range_text}"
            out.append(InvoiceLine("usage", text, None, None, _round(tier.flat_fee, q), currency))
    elif model == "stairstep":
        if n > 0:
            tier = _tier_of(c.tiers, n)
            text = f"{label}Usage (stairstep tier {tier.range_text})"
            out.append(InvoiceLine("usage", text, n, None, _round(tier.flat_fee, q), currency))
    elif model == "package":
        pkg = p.package
        packages = -(-n // pkg.size) if pkg.round == "up" else n // pkg.size
        amount = _round(_EXACT.multiply(pkg.price, packages), q)
        text = f"{label}Usage {n:,} in {packages:,} × {pkg.size:,}-unit packages @ {c.unit_price_text}"
        out.append(InvoiceLine("usage", text, packages, pkg.price, amount, currency))
    elif model == "free":
        out.append(InvoiceLine("usage", f"{label}Usage (free)", n, None, _round(_ZERO, q), currency))
    # flat: the fee line is the whole charge


def _graduated(
    c: CompiledPricing, n: int, currency: str, q: Decimal, out: list[InvoiceLine], label: str
) -> None:
    for tier in c.tiers:
        if tier.first > n and tier.first != 1:
            break
        upto = n if tier.last is None or tier.last > n else tier.last
        units = upto - tier.first + 1 if upto >= tier.first else 0
        if tier.unit_price is not None:
            amount = _round(_EXACT.multiply(tier.unit_price, units), q)
            if units:
                text = f"{label}Usage {tier.first:,}–{upto:,} @ {tier.price_text}"
            else:
                text = f"{label}Usage {tier.range_text} @ {tier.price_text}"
            out.append(InvoiceLine("usage", text, units, tier.unit_price, amount, currency))
        if tier.flat_fee is not None:
            text = f"{label}Flat fee, tier {tier.range_text}"
            out.append(InvoiceLine("usage", text, None, None, _round(tier.flat_fee, q), currency))


def _tier_of(tiers: tuple[_Tier, ...], n: int) -> _Tier:
    for tier in tiers:
        if tier.last is None or n <= tier.last:
            return tier
    raise AssertionError("unreachable: the last tier is unbounded")  # pragma: no cover


def _compile(p: Pricing) -> CompiledPricing:
    model = p.model
    if model not in _MODELS:
        raise ValueError(f"unknown pricing model {model!r}: expected one of {', '.join(_MODELS)}")
    if p.included < 0:
        raise ValueError(f"pricing.included must be >= 0; got {p.included}")
    for name in ("fee", "setup_fee", "minimum", "maximum"):
        value = getattr(p, name)
        if value is not None and (not isinstance(value, Decimal) or not value.is_finite() or value < 0):
            raise ValueError(f"pricing.{name} must be a non-negative Decimal; got {value!r}")
    unit_text = ""
    if model == "per_unit":
        _check_price("pricing.unit_price", p.unit_price, required=True)
        unit_text = _fmt(p.unit_price)
    if model == "package":
        pkg = p.package
        if pkg is None:
            raise ValueError("pricing.package is required for the package model")
        if pkg.size < 1:
            raise ValueError(f"pricing.package.size must be >= 1; got {pkg.size}")
        if pkg.round not in ("up", "down"):
            raise ValueError(f"pricing.package.round must be 'up' or 'down'; got {pkg.round!r}")
        _check_price("pricing.package.price", pkg.price, required=True)
        unit_text = _fmt(pkg.price)
    tiers: list[_Tier] = []
    if model in ("graduated", "volume", "stairstep"):
        if not p.tiers:
            raise ValueError(f"pricing.tiers is required for the {model} model")
        first = 1
        for i, t in enumerate(p.tiers):
            where = f"pricing.tiers[{i}]"
            last_tier = i == len(p.tiers) - 1
            if t.up_to is None and not last_tier:
                raise ValueError(f"{where}.up_to: only the last tier may be inf")
            if t.up_to is not None and last_tier:
                raise ValueError(f"{where}.up_to: the last tier's up_to must be inf; got {t.up_to}")
            if t.up_to is not None and t.up_to < first:
                raise ValueError(f"{where}.up_to must be >= {first} (tiers strictly increase); got {t.up_to}")
            _check_price(f"{where}.unit_price", t.unit_price, required=False)
            _check_price(f"{where}.flat_fee", t.flat_fee, required=False)
            if model == "stairstep":
                if t.flat_fee is None:
                    raise ValueError(f"{where}.flat_fee is required for the stairstep model")
            elif t.unit_price is None and t.flat_fee is None:
                raise ValueError(f"{where}: a tier needs unit_price, flat_fee or both")
            range_text = f"{first:,}+" if t.up_to is None else f"{first:,}–{t.up_to:,}"
            price_text = _fmt(t.unit_price) if t.unit_price is not None else ""
            tiers.append(_Tier(first, t.up_to, t.unit_price, t.flat_fee, price_text, range_text))
            if t.up_to is not None:
                first = t.up_to + 1
    return CompiledPricing(p, tuple(tiers), unit_text)


def _check_price(name: str, value: Decimal | None, *, required: bool) -> None:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise ValueError(f"{name} must be a non-negative Decimal; got {value!r}")
