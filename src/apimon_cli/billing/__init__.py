"""Billing: pricing models, billing windows and invoices (pure functions, Decimal end to end)."""

from .currency import is_known_currency, minor_unit, quantize
from .invoice import ComparisonRow, Invoice, build_invoices, compare_invoices
from .lines import InvoiceLine
from .periods import BillingWindow, parse_period, window_of
from .pricing import charge_lines

__all__ = [
    "BillingWindow",
    "ComparisonRow",
    "Invoice",
    "InvoiceLine",
    "build_invoices",
    "charge_lines",
    "compare_invoices",
    "is_known_currency",
    "minor_unit",
    "parse_period",
    "quantize",
    "window_of",
]
