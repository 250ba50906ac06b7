"""Invoice lines: what ``billing.pricing`` produces and ``billing.invoice`` collects (no imports of either, so
the two never import each other)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

LineType = Literal["fee", "setup_fee", "usage", "minimum", "maximum", "unpriced"]
#: every line type, in the order an invoice lists them
LINE_TYPES: tuple[LineType, ...] = ("fee", "setup_fee", "usage", "minimum", "maximum", "unpriced")


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    line_type: LineType
    description: str
    quantity: int | None  # units the unit_price applies to (packages for the package model)
    unit_price: Decimal | None
    amount: Decimal  # rounded to the currency's minor unit; negative for a maximum discount
    currency: str


__all__ = ["LINE_TYPES", "InvoiceLine", "LineType"]
