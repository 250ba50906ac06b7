from decimal import Decimal as D

import pytest

from apimon_cli.billing.currency import MINOR_UNITS, is_known_currency, minor_unit, quantize


@pytest.mark.parametrize(
    ("code", "exp"),
    [
        ("USD", 2), ("EUR", 2), ("GBP", 2), ("CHF", 2), ("MGA", 2), ("MRU", 2),
        ("JPY", 0), ("KRW", 0), ("CLP", 0), ("ISK", 0), ("VND", 0), ("XOF", 0), ("UGX", 0),
        ("BHD", 3), ("KWD", 3), ("JOD", 3), ("OMR", 3), ("TND", 3), ("LYD", 3), ("IQD", 3),
        ("CLF", 4), ("UYW", 4),
    ],
)  # fmt: skip
def test_minor_unit(code, exp):
    assert minor_unit(code) == exp
    assert is_known_currency(code)


def test_zero_and_three_decimal_sets_are_exactly_iso():
    zero = {c for c, e in MINOR_UNITS.items() if e == 0}
    three = {c for c, e in MINOR_UNITS.items() if e == 3}
    four = {c for c, e in MINOR_UNITS.items() if e == 4}
    assert zero == {
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV",
        "XAF", "XOF", "XPF",
    }  # fmt: skip
    assert three == {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
    assert four == {"CLF", "UYW"}
    assert all(len(c) == 3 and c.isalpha() and c.isupper() for c in MINOR_UNITS)
    assert set(MINOR_UNITS.values()) == {0, 2, 3, 4}
    assert len(MINOR_UNITS) > 150


@pytest.mark.parametrize("code", ["ABC", "", "US", "XAU", "XXX", "XTS", "usd"])
def test_unknown_codes(code):
    assert not is_known_currency(code)
    with pytest.raises(ValueError, match="currency"):
        minor_unit(code)
    with pytest.raises(ValueError):
        quantize(D(1), code)


def test_error_messages_help():
    with pytest.raises(ValueError, match="upper case.*'USD'"):
        minor_unit("usd")
    with pytest.raises(ValueError, match="no minor unit"):
        minor_unit("XAU")


@pytest.mark.parametrize(
    ("amount", "code", "expected"),
    [
        ("0.005", "USD", "0.01"),  # half up, not banker's (which gives 0.00)
        ("0.015", "USD", "0.02"),
        ("0.025", "USD", "0.03"),  # banker's would give 0.02
        ("0.0049999999999", "USD", "0.00"),
        ("-0.005", "USD", "-0.01"),  # half away from zero
        ("5", "USD", "5.00"),
        ("2.5", "JPY", "3"),
        ("1.4999", "JPY", "1"),
        ("1000", "JPY", "1000"),
        ("1.2345", "BHD", "1.235"),
        ("1.23449", "BHD", "1.234"),
        ("0.00005", "CLF", "0.0001"),
    ],
)
def test_quantize_half_up(amount, code, expected):
    got = quantize(D(amount), code)
    assert str(got) == expected
