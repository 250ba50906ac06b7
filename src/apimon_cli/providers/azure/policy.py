"""The product policy apimon writes on Azure API Management, and how it reads one back.

apimon owns exactly this shape (a comment is added for humans; comments never count)::

    <policies>
        <inbound>
            <base />
            <rate-limit calls="R" renewal-period="1" />        rate_limit.rate R per second
            <quota calls="N" renewal-period="86400" />         quota day / week (604800) / month (2592000)
        </inbound>
        <backend><base /></backend>
        <outbound><base /></outbound>
        <on-error><base /></on-error>
    </policies>

Policies are compared parsed (whitespace, comments, attribute order and quoting ignored): APIM returns
them re-formatted, and that is never a difference. Anything else in a live policy (other elements, extra
attributes, a missing ``<base />``) is *foreign*: reported by name and never overwritten unless forced.
Pure functions, no I/O and no Azure imports.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ...model import Quota, RateLimit

SECTIONS = ("inbound", "backend", "outbound", "on-error")
QUOTA_SECONDS = {"day": 86_400, "week": 604_800, "month": 2_592_000}
PERIOD_OF_SECONDS = {v: k for k, v in QUOTA_SECONDS.items()}
RATE_WINDOW_SECONDS = 1
LIMIT_ATTRS = frozenset({"calls", "renewal-period"})
MARKER_COMMENT = " managed by apimon: rate-limit and quota come from the apimon plan "


def generate_policy(rate_limit: RateLimit | None, quota: Quota | None) -> str:
    """The full policy document for a product's limits (burst is not expressible and not written)."""
    inbound = ["\t\t<base />"]
    if rate_limit is not None:
        inbound.append(f'\t\t<rate-limit calls="{rate_limit.rate * RATE_WINDOW_SECONDS}" '
                       f'renewal-period="{RATE_WINDOW_SECONDS}" />')
    if quota is not None:
        inbound.append(f'\t\t<quota calls="{quota.limit}" renewal-period="{QUOTA_SECONDS[quota.period]}" />')
    lines = ["<policies>", f"\t<!--{MARKER_COMMENT}-->", "\t<inbound>", *inbound, "\t</inbound>"]
    for section in SECTIONS[1:]:
        lines += [f"\t<{section}>", "\t\t<base />", f"\t</{section}>"]
    lines.append("</policies>")
    return "\n".join(lines)


# ---------------------------------------------------------------- semantic comparison

def canonical(xml: str) -> tuple:
    """A comparable form of a policy document: comments, whitespace-only text and attribute order gone."""
    return _canon(ET.fromstring(xml.strip()))


def _canon(el: ET.Element) -> tuple:
    text = (el.text or "").strip()
    children = tuple(_canon(c) for c in el if isinstance(c.tag, str))
    tails = "".join((c.tail or "").strip() for c in el)
    return (el.tag, tuple(sorted(el.attrib.items())), text + tails, children)


def policies_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return canonical(a) == canonical(b)
    except ET.ParseError:
        return False


# ---------------------------------------------------------------- reading a live policy

@dataclass
class PolicyReading:
    """What apimon understands of a live product policy."""

    rate_limit: tuple[int, int] | None = None  # (calls, renewal-period seconds)
    quota: tuple[int, int] | None = None  # (calls, renewal-period seconds)
    foreign: list[str] = field(default_factory=list)  # what apimon did not write, named for the user
    notes: list[str] = field(default_factory=list)  # limits apimon reads but cannot map exactly

    @property
    def model_rate_limit(self) -> RateLimit | None:
        if self.rate_limit is None:
            return None
        calls, period = self.rate_limit
        if period <= 0 or calls % period:
            return None
        rate = calls // period
        return RateLimit(rate=rate, burst=rate)

    @property
    def model_quota(self) -> Quota | None:
        if self.quota is None:
            return None
        calls, period = self.quota
        name = PERIOD_OF_SECONDS.get(period)
        return Quota(limit=calls, period=name) if name else None  # type: ignore[arg-type]


def read_policy(xml: str | None) -> PolicyReading:
    reading = PolicyReading()
    if xml is None or not xml.strip():
        return reading
    try:
        root = ET.fromstring(xml.strip())
    except ET.ParseError as exc:
        reading.foreign.append(f"unparsable policy XML ({exc})")
        return reading
    if root.tag != "policies":
        reading.foreign.append(f"<{root.tag}> root element")
        return reading
    seen: set[str] = set()
    for section in root:
        if not isinstance(section.tag, str):
            continue
        if section.tag not in SECTIONS or section.tag in seen:
            reading.foreign.append(f"<{section.tag}>" if section.tag not in SECTIONS else f"second <{section.tag}>")
            continue
        seen.add(section.tag)
        _read_section(section, reading)
    for missing in (s for s in SECTIONS if s not in seen):
        reading.foreign.append(f"{missing} without <base /> (section missing)")
    _check_limits(reading)
    return reading


def _read_section(section: ET.Element, reading: PolicyReading) -> None:
    name = section.tag
    if section.attrib:
        reading.foreign.append(f"{name}@{','.join(sorted(section.attrib))}")
    has_base = False
    for el in section:
        if not isinstance(el.tag, str):
            continue
        where = f"{name}/{el.tag}"
        if el.tag == "base" and not has_base and not el.attrib and not len(el):
            has_base = True
        elif name == "inbound" and el.tag in ("rate-limit", "quota"):
            slot = "rate_limit" if el.tag == "rate-limit" else "quota"
            if getattr(reading, slot) is not None:
                reading.foreign.append(f"{where} (a second one)")
                continue
            extra = sorted(set(el.attrib) - LIMIT_ATTRS)
            if extra:
                reading.foreign.append(f"{where}@{','.join(extra)}")
            if any(isinstance(c.tag, str) for c in el):
                reading.foreign.append(f"{where} child elements ({', '.join(sorted({c.tag for c in el}))})")
            try:
                setattr(reading, slot, (int(el.attrib["calls"]), int(el.attrib["renewal-period"])))
            except (KeyError, ValueError):
                reading.foreign.append(f"{where} without whole-number calls and renewal-period")
        else:
            reading.foreign.append(where)
    if not has_base:
        reading.foreign.append(f"{name} without <base />")


def _check_limits(reading: PolicyReading) -> None:
    if reading.rate_limit is not None and reading.model_rate_limit is None:
        calls, period = reading.rate_limit
        reading.notes.append(f"the live rate-limit allows {calls} calls per {period} s, which is not a whole "
                             "number of calls per second; apimon reads it as no rate limit and apply "
                             "replaces it")
    if reading.quota is not None and reading.model_quota is None:
        calls, period = reading.quota
        reading.notes.append(f"the live quota renews every {period} s, not after a day (86400), a week (604800) "
                             "or a month (2592000); apimon reads it as no quota and apply replaces it")
