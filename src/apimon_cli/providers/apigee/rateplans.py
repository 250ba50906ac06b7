"""Money and rate plans, pure: google.type.Money from exact Decimals and back, the rate plan apimon writes
for a product, and the neutral pricing a rate plan expresses (for import, and for the diff: a product's
pricing is compared as the rate plan it would be on Apigee)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from ...model import Pricing, Product, Tier
from ...render.words import count
from .client import ApigeeError

PLAN_MARKER = "apimon-managed"  # rate plans have no attributes: their description starts with this
_PERIOD_TO_BILLING = {"month": "MONTHLY", "week": "WEEKLY"}
OUTPUT_ONLY = ("createdAt", "lastModifiedAt")
_NO_PLAN_MODELS = ("free", "volume", "package")



def money_to_api(amount: Decimal, currency: str) -> dict:
    """google.type.Money from an exact Decimal: {currencyCode, units (int64 string), nanos}."""
    if amount < 0 or not amount.is_finite():
        raise ValueError(f"{amount} is not a non-negative amount")
    units = int(amount)  # truncates toward zero, exactly
    nanos = (amount - units).scaleb(9)
    if nanos != nanos.to_integral_value():
        raise ValueError(f"{format(amount, 'f')} has more than 9 decimal places (Apigee money has nanos)")
    out: dict = {"currencyCode": currency, "units": str(units)}
    if int(nanos):
        out["nanos"] = int(nanos)
    return out


def money_from_api(money: dict | None) -> Decimal:
    """The exact amount of a google.type.Money (proto3: absent units/nanos are 0)."""
    if not money:
        return Decimal(0)
    try:
        value = Decimal(int(money.get("units") or 0)) + Decimal(int(money.get("nanos") or 0)).scaleb(-9)
    except (ValueError, TypeError, InvalidOperation):
        raise ApigeeError(f"Apigee returned an unreadable money value: {money!r}") from None
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def rate_plan_body(product: Product, currency: str, period: str) -> dict | None:
    """The rate plan apimon writes for a product, without times and state; None when none is written."""
    p = product.pricing
    if p.model in _NO_PLAN_MODELS:
        return None
    body: dict = {
        "displayName": product.display_name,
        "description": f"{PLAN_MARKER}: pricing of API product {product.id}, written by apimon",
        "currencyCode": currency,
        "billingPeriod": _PERIOD_TO_BILLING[period],
    }
    if p.fee is not None:
        body["fixedRecurringFee"] = money_to_api(p.fee, currency)
        body["fixedFeeFrequency"] = 1
    if p.setup_fee is not None:
        body["setupFee"] = money_to_api(p.setup_fee, currency)
    if p.model == "per_unit":
        body["consumptionPricingType"] = "FIXED_PER_UNIT"
        body["consumptionPricingRates"] = [{"fee": money_to_api(p.unit_price or Decimal(0), currency)}]
    elif p.model in ("graduated", "stairstep"):
        body["consumptionPricingType"] = "BANDED" if p.model == "graduated" else "STAIRSTEP"
        rates, start = [], 0
        for t in p.tiers:
            amount = t.unit_price if p.model == "graduated" else t.flat_fee
            rate: dict = {"fee": money_to_api(amount or Decimal(0), currency)}
            if start:
                rate["start"] = str(start)
            if t.up_to is not None:  # Apigee ranges (start, end]: apimon's up_to is inclusive too
                rate["end"] = str(t.up_to)
                start = t.up_to
            rates.append(rate)
        body["consumptionPricingRates"] = rates
    return body


def plan_terms(plan: dict | None) -> tuple | None:
    """What a rate plan charges, comparable between what apimon would write and what Apigee holds."""
    if plan is None:
        return None
    rates = tuple((int(r.get("start") or 0), int(r.get("end") or 0), money_from_api(r.get("fee")))
                  for r in plan.get("consumptionPricingRates", []))
    return (plan.get("currencyCode", ""), plan.get("billingPeriod", ""), money_from_api(plan.get("setupFee")),
            money_from_api(plan.get("fixedRecurringFee")), int(plan.get("fixedFeeFrequency") or 0),
            plan.get("consumptionPricingType", ""), rates)


def plan_summary(plan: dict | None) -> str:
    if plan is None:
        return "no rate plan"
    freq = int(plan.get("fixedFeeFrequency") or 0)
    return (f"{plan.get('currencyCode', '?')} {plan.get('billingPeriod', '?')}"
            + (f", fee every {count(freq, 'period')}" if freq else ""))


def pricing_from_rate_plan(plan: dict | None) -> Pricing:
    """The neutral pricing a rate plan expresses (used for import and for drift)."""
    if plan is None:
        return Pricing()
    fee = money_from_api(plan["fixedRecurringFee"]) if plan.get("fixedRecurringFee") else None
    setup = money_from_api(plan["setupFee"]) if plan.get("setupFee") else None
    ctype = plan.get("consumptionPricingType", "")
    rates = plan.get("consumptionPricingRates", [])
    if ctype == "FIXED_PER_UNIT" and rates:
        return Pricing(model="per_unit", fee=fee, setup_fee=setup, unit_price=money_from_api(rates[0].get("fee")))
    if ctype in ("BANDED", "STAIRSTEP") and rates:
        tiers = []
        for i, r in enumerate(rates):
            end = int(r.get("end") or 0)
            up_to = None if (i == len(rates) - 1 and not end) else end
            amount = money_from_api(r.get("fee"))
            tiers.append(Tier(up_to=up_to, unit_price=amount) if ctype == "BANDED"
                         else Tier(up_to=up_to, flat_fee=amount))
        return Pricing(model="graduated" if ctype == "BANDED" else "stairstep", fee=fee, setup_fee=setup,
                       tiers=tuple(tiers))
    if fee is not None or setup is not None:
        return Pricing(model="flat", fee=fee if fee is not None else Decimal(0), setup_fee=setup)
    return Pricing()


def window(plan: dict) -> tuple[int, float]:
    """[startTime, endTime) in ms; an unset end is open."""
    end = int(plan.get("endTime") or 0)
    return int(plan.get("startTime") or 0), (end if end else float("inf"))


def plan_owned(plan: dict) -> bool:
    return (plan.get("description") or "").startswith(PLAN_MARKER)


def plan_body_for_put(plan: dict) -> dict:
    return {k: v for k, v in plan.items() if k not in ("name", *OUTPUT_ONLY)}


def ms_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def as_rate_plan(pricing: Pricing, currency: str, period: str) -> Pricing:
    """The neutral pricing of the rate plan apimon would write (what Apigee can hold of ``pricing``): models
    without a rate plan become free, graduated tiers lose their flat fees. Unwritable amounts stay as they
    are (preflight reports them)."""
    try:
        body = rate_plan_body(Product(id="", display_name="", pricing=pricing), currency, period)
    except ValueError:
        return pricing
    return pricing_from_rate_plan(body)
