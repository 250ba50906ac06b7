"""The billing fakes reject what the real services reject (request shapes, auth, limits, dedup)."""

from __future__ import annotations

import json
import time

import requests


def _stripe(fake, path, data, key="sk_test_pushsecret0001", **headers):
    return requests.post(fake.url + path, data=data, headers={"Authorization": f"Bearer {key}", **headers})


def test_stripe_meter_event_rules(stripe_fake):
    now = int(time.time())
    base = {"event_name": "api_requests", "payload[stripe_customer_id]": "cus_1", "payload[value]": "5",
            "timestamp": str(now - 3600)}
    assert _stripe(stripe_fake, "/v1/billing/meter_events", base, key="sk_wrong").status_code == 401
    assert _stripe(stripe_fake, "/v1/billing/meter_events", {**base, "payload[value]": "1.5"}).json()["error"][
        "param"] == "payload[value]"
    old = _stripe(stripe_fake, "/v1/billing/meter_events", {**base, "timestamp": str(now - 36 * 86400)})
    assert old.status_code == 400 and "35 calendar days" in old.json()["error"]["message"]
    assert _stripe(stripe_fake, "/v1/billing/meter_events", {**base, "timestamp": str(now + 600)}).status_code == 400
    assert _stripe(stripe_fake, "/v1/billing/meter_events", {**base, "event_name": "nope"}).status_code == 400
    ok = _stripe(stripe_fake, "/v1/billing/meter_events", {**base, "identifier": "id-1"}, **{"Idempotency-Key": "k1"})
    assert ok.status_code == 200 and ok.json()["object"] == "billing.meter_event"
    replay = _stripe(stripe_fake, "/v1/billing/meter_events", {**base, "identifier": "id-1"},
                     **{"Idempotency-Key": "k1"})
    assert replay.headers.get("Idempotent-Replayed") == "true" and stripe_fake.total("cus_1") == 5
    other = _stripe(stripe_fake, "/v1/billing/meter_events", {**base, "identifier": "id-2"},
                    **{"Idempotency-Key": "k1"})
    assert other.status_code == 400 and other.json()["error"]["type"] == "idempotency_error"
    dup = _stripe(stripe_fake, "/v1/billing/meter_events", {**base, "identifier": "id-1"})
    assert dup.status_code == 400 and "already exists" in dup.json()["error"]["message"]
    cancel = {"event_name": "api_requests", "type": "cancel", "cancel[identifier]": "id-1"}
    assert _stripe(stripe_fake, "/v1/billing/meter_event_adjustments", cancel).status_code == 200
    assert stripe_fake.total("cus_1") == 0
    assert _stripe(stripe_fake, "/v1/billing/meter_event_adjustments", cancel).status_code == 400  # already
    _stripe(stripe_fake, "/v1/billing/meter_events", {**base, "identifier": "id-3"})
    stripe_fake.clock_offset = 25 * 3600
    late = _stripe(stripe_fake, "/v1/billing/meter_event_adjustments", {**cancel, "cancel[identifier]": "id-3"})
    assert late.status_code == 400 and late.json()["error"]["code"] == "out_of_window"
    summary = requests.get(stripe_fake.url + "/v1/billing/meters/mtr_api/event_summaries",
                           params={"customer": "cus_1", "start_time": 0, "end_time": now + 10 ** 6},
                           headers={"Authorization": "Bearer sk_test_pushsecret0001"}).json()
    assert summary["data"][0]["aggregated_value"] == 5.0


def _lago(fake, events, key="lago_pushsecret_0002"):
    return requests.post(fake.url + "/api/v1/events/batch", data=json.dumps({"events": events}),
                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def test_lago_batches_are_atomic_limited_and_deduplicated(lago_fake):
    ev = [{"transaction_id": f"t{i}", "external_subscription_id": "sub_1", "code": "api_requests",
           "timestamp": 1_700_000_000, "properties": {"requests": 1}} for i in range(101)]
    assert _lago(lago_fake, ev[:1], key="bad").status_code == 401
    assert _lago(lago_fake, ev).json()["error_details"] == {"events": ["too_many_events"]}
    assert _lago(lago_fake, []).json()["error_details"] == {"events": ["no_events"]}
    bad = _lago(lago_fake, [ev[0], {**ev[1], "timestamp": "soon"}, ev[2]])
    assert bad.status_code == 422 and bad.json()["error_details"] == {"1": {"timestamp": ["invalid_format"]}}
    assert lago_fake.total("sub_1") == 0  # atomic: nothing stored
    assert _lago(lago_fake, ev[:3]).status_code == 200 and lago_fake.total("sub_1") == 3
    dup = _lago(lago_fake, [ev[3], ev[0]])
    assert dup.json()["error_details"] == {"1": {"transaction_id": ["value_already_exist"]}}
    assert lago_fake.total("sub_1") == 3


def test_openmeter_cloudevents_content_types_validation_and_dedup(openmeter_fake):
    url, auth = openmeter_fake.url + "/api/v1/events", {"Authorization": "Bearer om_pushsecret_0003"}
    e = {"specversion": "1.0", "id": "e1", "source": "apimon", "type": "api_requests", "subject": "acme",
         "time": "2026-11-01T12:00:00Z", "data": {"requests": 4}}
    batch = {**auth, "Content-Type": "application/cloudevents-batch+json"}
    assert requests.post(url, data=json.dumps([e]), headers={"Content-Type": "application/cloudevents+json"}
                         ).status_code == 401
    assert requests.post(url, data=json.dumps([e]), headers={**auth, "Content-Type": "text/plain"}).status_code == 415
    r = requests.post(url, data=json.dumps([e, {**e, "id": "e2", "subject": ""}]), headers=batch)
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/problem+json"
    assert openmeter_fake.total("acme") == 0
    assert requests.post(url, data=json.dumps([e]), headers=batch).status_code == 204
    single = {**auth, "Content-Type": "application/cloudevents+json"}
    assert requests.post(url, data=json.dumps(e), headers=single).status_code == 204  # same id + source
    assert openmeter_fake.total("acme") == 4


def test_stripe_event_summaries_per_day_through_the_official_sdk(stripe_fake):
    # what a user (or a check) reads back with the stripe package: per-day summaries, paged
    import stripe

    client = stripe.StripeClient("sk_test_pushsecret0001", base_addresses={"api": stripe_fake.url},
                                 max_network_retries=0)
    today = int(time.time()) // 86400 * 86400
    for back, value in ((3, 7), (2, 11), (1, 13)):
        client.v1.billing.meter_events.create(params={
            "event_name": "api_requests", "timestamp": today - back * 86400 + 43200,
            "payload": {"stripe_customer_id": "cus_sum", "value": str(value)}})
    [meter] = client.v1.billing.meters.list().data
    params = {"customer": "cus_sum", "start_time": today - 5 * 86400, "end_time": today + 86400}
    [whole] = client.v1.billing.meters.event_summaries.list(meter.id, params=params).data
    assert whole.aggregated_value == 31
    page = client.v1.billing.meters.event_summaries.list(
        meter.id, params={**params, "value_grouping_window": "day", "limit": 2})
    assert page.has_more and len(page.data) == 2
    days = [(s.start_time, s.aggregated_value) for s in page.auto_paging_iter()]
    assert days == [(today - 86400, 13), (today - 2 * 86400, 11), (today - 3 * 86400, 7)]
    try:
        client.v1.billing.meters.event_summaries.list(meter.id, params={**params, "value_grouping_window": "week"})
    except stripe.InvalidRequestError as exc:
        assert exc.param == "value_grouping_window"
    else:
        raise AssertionError("a week window must be refused")


def test_a_request_cut_off_mid_body_is_not_processed_nor_remembered(stripe_fake):
    """A client killed while sending (headers out, body not): like Stripe, nothing is created and the
    Idempotency-Key is not taken, so the client's retry with the full body succeeds."""
    import socket
    from urllib.parse import urlencode, urlsplit

    now = int(time.time())
    form = {"event_name": "api_requests", "payload[stripe_customer_id]": "cus_cut", "payload[value]": "4",
            "timestamp": str(now - 3600), "identifier": "id-cut"}
    body = urlencode(form).encode()
    u = urlsplit(stripe_fake.url)
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall(b"POST /v1/billing/meter_events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  b"sk_test_pushsecret0001\r\nIdempotency-Key: k-cut\r\nContent-Type: application/x-www-form-"
                  b"urlencoded\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
    time.sleep(0.2)
    assert stripe_fake.total("cus_cut") == 0
    ok = _stripe(stripe_fake, "/v1/billing/meter_events", form, **{"Idempotency-Key": "k-cut"})
    assert ok.status_code == 200, ok.text
    assert ok.headers.get("Idempotent-Replayed") is None and stripe_fake.total("cus_cut") == 4
