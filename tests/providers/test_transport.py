"""The shared transport: the one Retry-After parser, the one pager, the timeouts every HTTP client gets."""

from __future__ import annotations

import email.utils

from apimon_cli.providers.transport import TIMEOUTS, backoff, paginate, retry_after_seconds


def test_retry_after_seconds_milliseconds_and_http_dates():
    assert retry_after_seconds({"Retry-After": "7"}) == 7.0
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    assert retry_after_seconds({"Retry-After": "-3"}) == 0.0
    assert retry_after_seconds({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25  # Azure's, more precise
    assert retry_after_seconds({"x-ms-retry-after-ms": "1500"}) == 1.5
    now = 1_800_000_000.0
    when = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds({"Retry-After": when}, now=now) == 30.0
    assert retry_after_seconds({"Retry-After": email.utils.formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    for headers in (None, {}, {"Retry-After": ""}, {"Retry-After": "soon"}, {"Other": "1"}):
        assert retry_after_seconds(headers) is None


def test_paginate_follows_tokens_and_stops_on_a_repeated_one():
    pages = {None: ([1, 2], "a"), "a": ([3], "b"), "b": ([4], None)}
    asked = []

    def fetch(token):
        asked.append(token)
        return pages[token]

    assert list(paginate(fetch)) == [1, 2, 3, 4] and asked == [None, "a", "b"]
    looping = {None: ([1], "a"), "a": ([2], "b"), "b": ([3], "a")}  # a server that loops
    assert list(paginate(lambda t: looping[t])) == [1, 2, 3]


def test_backoff_and_timeouts():
    assert [backoff(n, 0.5, 5) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 5]
    assert TIMEOUTS.connect > 0 and TIMEOUTS.read > TIMEOUTS.connect
