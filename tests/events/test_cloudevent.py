"""The envelope and the builders: exact shapes, no key value or fingerprint, masked env values."""

from __future__ import annotations

import json

from apimon_cli.events import types as T
from apimon_cli.events.cloudevent import (
    CloudEvent,
    _q,
    change_events,
    request_body,
    request_data,
    rfc3339,
)
from apimon_cli.events.gateway import window_bounds
from apimon_cli.reconcile import SENSITIVE, Change, FieldChange
from apimon_cli.render.output import Masker


def test_rfc3339_is_utc_with_milliseconds():
    assert rfc3339(1796083200.0) == "2026-12-01T00:00:00.000Z"
    assert rfc3339(1796083201.2345) == "2026-12-01T00:00:01.234Z"
    assert rfc3339(1796083200.999) == "2026-12-01T00:00:00.999Z"
    assert rfc3339(1796040000.123) == "2026-11-30T12:00:00.123Z"  # not .122 (float error)
    assert rfc3339(1796083200.9999999) == "2026-12-01T00:00:01.000Z"


def test_the_gateways_hand_built_body_is_the_builders_json():
    cases = [
        ("acme", "pro", "petstore", "GET", 200, "success", ("counted", 1000, 17, "month"), "allowed", 1.23456, 12, 40),
        ("b-2", "free", None, "POST", 429, "blocked", None, "limited", 0.2, 0, 0),
        ("x", "p", 'we"ird\\api\u00e9', "PATCH", 502, "failed", ("exceeded", 5, 5, "day"), "none", 30000.0, 1, 2),
    ]
    for sub, prod, api, method, status, outcome, quota, rate, lat, rq, rs in cases:
        qd = None if quota is None else dict(zip(("outcome", "limit", "used", "period"), quota, strict=True))
        want = CloudEvent("id-1", "apimon/gateway/127.0.0.1:8080", T.REQUEST, "2026-11-30T12:00:00.000Z", sub,
                          request_data(sub, prod, api, method, status, outcome, qd, rate, lat, rq, rs))
        got = request_body("id-1", _q("apimon/gateway/127.0.0.1:8080"), "2026-11-30T12:00:00.000Z", sub, prod, api,
                           method, status, outcome, quota, rate, lat, rq, rs)
        assert json.loads(got) == json.loads(want.body())
        assert list(json.loads(got)) == list(json.loads(want.body()))  # same attribute order too


def test_change_events_never_carry_a_key_and_mask_env_values():
    change = Change("update", "subscriber", "acme", (
        FieldChange("key", SENSITIVE, SENSITIVE),
        FieldChange("metadata.token", "old", "secret-from-env-value"),
        FieldChange("enabled", True, False),
    ))
    events = change_events(change, provider="local", target="/srv", mask=Masker(["secret-from-env-value"]))
    assert [e.type for e in events] == [T.SUBSCRIBER_UPDATED, T.KEY_REVOKED]
    upd = events[0].envelope()
    assert upd["subject"] == "acme" and upd["source"] == "apimon/apply"
    assert upd["data"] == {"subscriber": "acme", "provider": "local", "target": "/srv", "action": "update",
                           "fields": {"metadata.token": {"before": "old", "after": "***"},
                                      "enabled": {"before": True, "after": False}},
                           "key_changed": True}
    assert events[1].envelope()["data"]["reason"] == "disabled"
    assert all(SENSITIVE not in e.body().decode() and "secret-from-env-value" not in e.body().decode()
               for e in events)
    replaced = change_events(Change("update", "subscriber", "bob", (FieldChange("key", SENSITIVE, SENSITIVE),)),
                             provider="aws", target="t")
    assert [(e.type, e.data.get("reason")) for e in replaced] == [(T.SUBSCRIBER_UPDATED, None),
                                                                 (T.KEY_REVOKED, "replaced")]
    # AWS plans a new key value as a replacement: the same events, with the action it was
    swapped = change_events(Change("replace", "subscriber", "bob", (FieldChange("key", SENSITIVE, SENSITIVE),),
                                   reason="AWS cannot change an imported key value"), provider="aws", target="t")
    assert [(e.type, e.data.get("reason")) for e in swapped] == [(T.SUBSCRIBER_UPDATED, None),
                                                                (T.KEY_REVOKED, "replaced")]
    assert swapped[0].data["action"] == "replace"
    product = change_events(Change("delete", "product", "pro"), provider="aws", target="t")
    assert [e.type for e in product] == [T.PRODUCT_DELETED] and product[0].subject is None
    assert "subject" not in product[0].envelope()


def test_quota_window_bounds():
    assert window_bounds("day:2026-11-30") == ("2026-11-30", "2026-12-01")
    assert window_bounds("week:2026-W49") == ("2026-11-30", "2026-12-07")
    assert window_bounds("month:2026-12") == ("2026-12-01", "2027-01-01")
