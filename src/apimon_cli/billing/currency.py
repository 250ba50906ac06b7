"""ISO 4217 currencies and their minor units, and rounding of money to them.

The table is ISO 4217 list one (current currencies and funds), code -> minor-unit exponent: the number of
decimal places an amount in that currency is invoiced with (USD 2, JPY 0, BHD 3, CLF 4). Codes whose minor
unit ISO lists as "N.A." (gold, silver, SDR, bond-market units, test and no-currency codes: XAU, XDR,
XTS, XXX, ...) are not invoiceable and are deliberately left out: ``minor_unit`` rejects them with a
message that says why. A handful of codes that ISO has withdrawn only recently and that old plans and
ledgers may still carry (ANG, CUC, SLL, ZWL) are kept, with their historical exponent.

Rounding is ``ROUND_HALF_UP`` (0.005 USD -> 0.01, -0.005 -> -0.01: half away from zero), done once per
invoice line.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation

#: ISO 4217 alphabetic code -> minor-unit exponent.
MINOR_UNITS: dict[str, int] = {
    "AED": 2, "AFN": 2, "ALL": 2, "AMD": 2, "ANG": 2, "AOA": 2, "ARS": 2, "AUD": 2, "AWG": 2, "AZN": 2,
    "BAM": 2, "BBD": 2, "BDT": 2, "BGN": 2, "BHD": 3, "BIF": 0, "BMD": 2, "BND": 2, "BOB": 2, "BOV": 2,
    "BRL": 2, "BSD": 2, "BTN": 2, "BWP": 2, "BYN": 2, "BZD": 2,
    "CAD": 2, "CDF": 2, "CHE": 2, "CHF": 2, "CHW": 2, "CLF": 4, "CLP": 0, "CNY": 2, "COP": 2, "COU": 2,
    "CRC": 2, "CUC": 2, "CUP": 2, "CVE": 2, "CZK": 2,
    "DJF": 0, "DKK": 2, "DOP": 2, "DZD": 2,
    "EGP": 2, "ERN": 2, "ETB": 2, "EUR": 2,
    "FJD": 2, "FKP": 2,
    "GBP": 2, "GEL": 2, "GHS": 2, "GIP": 2, "GMD": 2, "GNF": 0, "GTQ": 2, "GYD": 2,
    "HKD": 2, "HNL": 2, "HTG": 2, "HUF": 2,
    "IDR": 2, "ILS": 2, "INR": 2, "IQD": 3, "IRR": 2, "ISK": 0,
    "JMD": 2, "JOD": 3, "JPY": 0,
    "KES": 2, "KGS": 2, "KHR": 2, "KMF": 0, "KPW": 2, "KRW": 0, "KWD": 3, "KYD": 2, "KZT": 2,
    "LAK": 2, "LBP": 2, "LKR": 2, "LRD": 2, "LSL": 2, "LYD": 3,
    "MAD": 2, "MDL": 2, "MGA": 2, "MKD": 2, "MMK": 2, "MNT": 2, "MOP": 2, "MRU": 2, "MUR": 2, "MVR": 2,
    "MWK": 2, "MXN": 2, "MXV": 2, "MYR": 2, "MZN": 2,
    "NAD": 2, "NGN": 2, "NIO": 2, "NOK": 2, "NPR": 2, "NZD": 2,
    "OMR": 3,
    "PAB": 2, "PEN": 2, "PGK": 2, "PHP": 2, "PKR": 2, "PLN": 2, "PYG": 0,
    "QAR": 2,
    "RON": 2, "RSD": 2, "RUB": 2, "RWF": 0,
    "SAR": 2, "SBD": 2, "SCR": 2, "SDG": 2, "SEK": 2, "SGD": 2, "SHP": 2, "SLE": 2, "SLL": 2, "SOS": 2,
    "SRD": 2, "SSP": 2, "STN": 2, "SVC": 2, "SYP": 2, "SZL": 2,
    "THB": 2, "TJS": 2, "TMT": 2, "TND": 3, "TOP": 2, "TRY": 2, "TTD": 2, "TWD": 2, "TZS": 2,
    "UAH": 2, "UGX": 0, "USD": 2, "USN": 2, "UYI": 0, "UYU": 2, "UYW": 4, "UZS": 2,
    "VED": 2, "VES": 2, "VND": 0, "VUV": 0,
    "WST": 2,
    "XAF": 0, "XCD": 2, "XCG": 2, "XOF": 0, "XPF": 0,
    "YER": 2,
    "ZAR": 2, "ZMW": 2, "ZWG": 2, "ZWL": 2,
}  # fmt: skip

#: ISO 4217 codes with no minor unit ("N.A."): valid codes, but not money apimon can invoice in.
NO_MINOR_UNIT: frozenset[str] = frozenset(
    {"XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX"}
)

#: Digits of precision of every money computation (rounding here, exact line arithmetic in pricing.py and
#: invoice totals in invoice.py): results that need more trap instead of being rounded.
MONEY_PRECISION = 100
#: Digits before the point of the largest amount a plan may give (fee, prices, minimum, maximum): amounts are
#: below 10**15 in any currency. A price then has at most 15 + 12 decimals = 27 digits; times a period's
#: quantity (a ledger count, below 2**63: 19 digits) 46; an invoice's sum of lines a few more: far inside
#: MONEY_PRECISION, so every amount that validates can be invoiced (``apimon validate`` enforces this bound).
MAX_AMOUNT_DIGITS = 15
#: Largest billable quantity / count (SQLite's INTEGER, the ledger's counters).
MAX_COUNT = 2**63 - 1

# One context for all rounding: wide enough that quantize never fails on a real amount.
_ROUNDING = Context(prec=MONEY_PRECISION, rounding=ROUND_HALF_UP, traps=[InvalidOperation])
# code -> Decimal exponent to quantize to (Decimal("0.01") for USD), built once.
_QUANTUM: dict[str, Decimal] = {code: Decimal(1).scaleb(-exp) for code, exp in MINOR_UNITS.items()}


def is_known_currency(code: str) -> bool:
    """True if ``code`` is an ISO 4217 currency apimon can invoice in (so ``minor_unit`` accepts it)."""
    return code in MINOR_UNITS


def minor_unit(code: str) -> int:
    """Decimal places of ``code`` (USD 2, JPY 0, BHD 3); ValueError for anything else."""
    try:
        return MINOR_UNITS[code]
    except KeyError:
        raise ValueError(_unknown(code)) from None


def quantum(code: str) -> Decimal:
    """The smallest amount of ``code`` as a Decimal exponent (``Decimal('0.01')`` for USD)."""
    try:
        return _QUANTUM[code]
    except KeyError:
        raise ValueError(_unknown(code)) from None


def quantize(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded ROUND_HALF_UP to ``currency``'s minor unit."""
    return amount.quantize(quantum(currency), context=_ROUNDING)


def _unknown(code: object) -> str:
    if isinstance(code, str) and code.upper() in MINOR_UNITS and code != code.upper():
        return f"unknown currency {code!r}: ISO 4217 codes are upper case ({code.upper()!r})"
    if code in NO_MINOR_UNIT:
        return (
            f"currency {code!r} has no minor unit in ISO 4217 (metal, fund or test code);"
            " invoices need a currency such as USD, EUR or JPY"
        )
    return f"unknown currency {code!r}: expected an ISO 4217 code such as USD, EUR, JPY or BHD"
