"""The Azure product policy apimon writes, and how it reads live policies back (no network)."""

from __future__ import annotations

from fakes.azure_apim import format_policy_xml

from apimon_cli.model import Quota, RateLimit
from apimon_cli.providers.azure.policy import generate_policy, policies_equal, read_policy


def test_generated_policy_reads_back_exactly_after_service_reformatting():
    for rate, quota in [(RateLimit(5, 10), Quota(1000, "day")), (RateLimit(200, 200), Quota(7, "week")),
                        (None, Quota(100000, "month")), (RateLimit(1, 1), None)]:
        xml = generate_policy(rate, quota)
        live = format_policy_xml(xml)  # what APIM gives back: tabs, CRLF, no declaration
        assert live != xml
        assert policies_equal(xml, live)
        reading = read_policy(live)
        assert reading.foreign == [] and reading.notes == []
        assert reading.model_rate_limit == (RateLimit(rate.rate, rate.rate) if rate else None)  # no burst
        assert reading.model_quota == quota


def test_generated_policy_shape():
    xml = generate_policy(RateLimit(50, 100), Quota(1000, "month"))
    assert '<rate-limit calls="50" renewal-period="1" />' in xml
    assert '<quota calls="1000" renewal-period="2592000" />' in xml
    for section in ("inbound", "backend", "outbound", "on-error"):
        assert f"<{section}>\n\t\t<base />" in xml


def test_comparison_ignores_whitespace_comments_attribute_order_and_quoting():
    ours = generate_policy(RateLimit(5, 5), Quota(10, "day"))
    hand = ("<?xml version='1.0'?>\r\n<policies><!-- edited by hand -->\n<inbound>  <base></base>"
            "<rate-limit renewal-period='1'   calls='5'/>\n<quota renewal-period=\"86400\" calls=\"10\"></quota>"
            "</inbound><backend><base/></backend><outbound><base/><!--x--></outbound>"
            "<on-error>\t<base/></on-error></policies>")
    assert policies_equal(ours, hand.split("?>", 1)[1])
    assert not policies_equal(ours, generate_policy(RateLimit(6, 6), Quota(10, "day")))
    assert not policies_equal(ours, "<policies><inbound>")  # malformed never equals
    assert policies_equal(None, None) and not policies_equal(ours, None)


def test_changed_limits_read_back_into_the_model():
    live = format_policy_xml(generate_policy(RateLimit(5, 5), Quota(10, "day")).replace('calls="5"', 'calls="7"'))
    reading = read_policy(live)
    assert reading.model_rate_limit == RateLimit(7, 7) and reading.foreign == []
    # a longer window that divides exactly is the same per-second rate
    assert read_policy(live.replace('calls="7" renewal-period="1"', 'calls="420" renewal-period="60"')
                       ).model_rate_limit == RateLimit(7, 7)


def test_limits_apimon_cannot_map_are_notes_not_values():
    live = generate_policy(RateLimit(5, 5), Quota(10, "day"))
    live = live.replace('calls="5" renewal-period="1"', 'calls="100" renewal-period="60"')
    live = live.replace('renewal-period="86400"', 'renewal-period="3600"')
    reading = read_policy(live)
    assert reading.model_rate_limit is None and reading.model_quota is None
    assert reading.foreign == []
    assert any("100 calls per 60 s" in n for n in reading.notes)
    assert any("3600 s" in n for n in reading.notes)


def test_foreign_elements_are_named():
    live = generate_policy(RateLimit(5, 5), None)
    live = live.replace("<base />\n\t\t<rate-limit", '<base />\n\t\t<ip-filter action="allow" />\n\t\t<rate-limit')
    live = live.replace('renewal-period="1" />', 'renewal-period="1" retry-after-header-name="X-Retry" />')
    live = live.replace("<outbound>\n\t\t<base />", '<outbound>\n\t\t<set-header name="x" />')
    reading = read_policy(live)
    assert reading.foreign == ["inbound/ip-filter", "inbound/rate-limit@retry-after-header-name",
                               "outbound/set-header", "outbound without <base />"]
    assert reading.model_rate_limit == RateLimit(5, 5)  # limits are still read


def test_odd_documents():
    assert read_policy(None).foreign == [] and read_policy("").model_quota is None
    assert read_policy("<policies><inbound>").foreign[0].startswith("unparsable policy XML")
    assert read_policy("<fragment />").foreign == ["<fragment> root element"]
    minimal = read_policy("<policies><inbound><base /><quota calls='@(1)' renewal-period='60' /></inbound></policies>")
    assert "inbound/quota without whole-number calls and renewal-period" in minimal.foreign
    assert "backend without <base /> (section missing)" in minimal.foreign
    two = read_policy(generate_policy(RateLimit(1, 1), None).replace(
        "<base />\n\t\t<rate", '<base />\n\t\t<rate-limit calls="9" renewal-period="1" />\n\t\t<rate'))
    assert "inbound/rate-limit (a second one)" in two.foreign
