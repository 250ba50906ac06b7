"""The client-side quota scheduler: pacing, the serial UpdateUsagePlan interval, bounds and backoff."""

from __future__ import annotations

import threading
import time

import pytest

from apimon_cli.providers.aws.scheduler import (
    Cancelled,
    Quotas,
    QuotaScaleError,
    RetryPolicy,
    lower_bound_seconds,
    quota_scale,
)


def test_scale_from_environment():
    assert quota_scale({}) == 1.0
    assert quota_scale({"APIMON_AWS_QUOTA_SCALE": "20"}) == 20.0
    for bad in ("0", "-1", "fast", "inf", "nan"):
        with pytest.raises(QuotaScaleError, match="APIMON_AWS_QUOTA_SCALE"):
            quota_scale({"APIMON_AWS_QUOTA_SCALE": bad})


def test_lower_bounds_follow_aws_quotas():
    b = lower_bound_seconds({"UpdateUsagePlan": 3})
    assert b["UpdateUsagePlan"] == pytest.approx(40.0) and b["*"] == 0
    b = lower_bound_seconds({"CreateApiKey": 500, "CreateUsagePlanKey": 500, "CreateUsagePlan": 50})
    assert b["*"] == pytest.approx((1050 - 40) / 10) and b["CreateApiKey"] == pytest.approx(99.0)
    assert lower_bound_seconds({"UpdateUsagePlan": 3}, scale=10)["UpdateUsagePlan"] == pytest.approx(4.0)


def test_global_bucket_paces_after_the_burst():
    q = Quotas(scale=50)  # 500/s, burst 37 kept client-side
    t0 = time.monotonic()
    for _ in range(37 + 100):
        q.acquire("GetApiKeys")
        q.completed("GetApiKeys")
    elapsed = time.monotonic() - t0
    assert 100 / 500 <= elapsed < 100 / 500 * 3  # the upper bound only catches gross waste (CI is loaded)


def test_update_usage_plan_interval_counts_from_completion():
    q = Quotas(scale=100)  # one every 0.2 s
    sent = []
    for _ in range(3):
        q.acquire("UpdateUsagePlan")
        sent.append(time.monotonic())
        time.sleep(0.05)  # the call is in flight
        q.completed("UpdateUsagePlan")
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert all(g >= 0.2 + 0.05 - 0.01 for g in gaps), gaps


def test_concurrent_callers_share_the_buckets():
    q = Quotas(scale=10)  # CreateApiKey 49/s, burst 48 client-side; global 98/s, burst 37
    times: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(10):
            q.acquire("CreateApiKey")
            with lock:
                times.append(time.monotonic())
            q.completed("CreateApiKey")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(times) == 80
    elapsed = time.monotonic() - t0
    assert (80 - 50) / 50 <= elapsed < (80 - 48) / 49 * 3  # never faster than AWS's 50/s, burst 50


def test_throttled_blocks_the_operation_bucket_and_cancel_releases_waiters():
    q = Quotas(scale=1000)
    q.throttled("CreateApiKey", 0.2)
    t0 = time.monotonic()
    q.acquire("CreateApiKey")
    assert time.monotonic() - t0 >= 0.19
    q.completed("CreateApiKey")

    q.acquire("UpdateUsagePlan")  # in flight: the next one waits for completion
    errors = []

    def waiter():
        try:
            q.acquire("UpdateUsagePlan")
        except Cancelled:
            errors.append("cancelled")

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    q.cancel()
    t.join(timeout=2)
    assert errors == ["cancelled"]


def test_retry_delay_honours_retry_after_and_backs_off():
    policy = RetryPolicy(scale=1.0)
    assert policy.delay(1, retry_after=3.0) == 3.0
    assert 0.125 <= policy.delay(1) <= 0.25
    assert 5.0 <= policy.delay(10) <= 10.0
    assert RetryPolicy(scale=100).delay(3) <= 0.01
