"""The pieces of transport.watch and the global options that need no network."""

from __future__ import annotations

import pytest

from apimon_cli.cli.options import hoist
from apimon_cli.providers.transport import TIMEOUTS, watch
from apimon_cli.security.redact import add_secrets


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("APIMON_TIMEOUT", raising=False)
    watch.configure(None)  # no deadline (a deadline would start the process backstop)
    yield
    monkeypatch.delenv("APIMON_TIMEOUT", raising=False)
    watch.configure(None)


def test_html_error_page_becomes_its_title():
    page = ("<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title><style>h1{x:y}</style></head>"
            "<body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>")
    assert watch.excerpt(page, "text/html") == "502 Bad Gateway"
    no_title = "<html><body><h1>Service\n Unavailable</h1><script>var a = 1;</script></body></html>"
    assert watch.excerpt(no_title) == "Service Unavailable"
    assert len(watch.excerpt("x" * 1000)) <= 160 and "\n" not in watch.excerpt("a\nb")


def test_paths_are_redacted():
    add_secrets(["super-secret-key-value-1234"])
    assert watch.redact_path("https://h/v1/keys/super-secret-key-value-1234?x=1") == "/v1/keys/***?x=1"
    assert watch.redact_path("https://h/p?api_key=abc&token=def&page=2") == "/p?api_key=***&token=***&page=2"
    assert watch.base_of("https://user:pw@Host.example:8443/p") == "https://host.example:8443"


def test_no_deadline_means_the_per_call_timeouts_and_a_retry_budget():
    assert watch.remaining() is None and watch.timeouts() == (TIMEOUTS.connect, TIMEOUTS.read)
    assert watch.may_retry()
    watch.spend_retry(watch.RETRY_BUDGET)
    assert not watch.may_retry() and "retry budget" in watch.budget_note()


def test_bad_apimon_timeout(monkeypatch):
    monkeypatch.setenv("APIMON_TIMEOUT", "-1")
    with pytest.raises(watch.ProviderError, match="APIMON_TIMEOUT must be above 0"):
        watch.configure(None)


def test_notice_says_what_and_why():
    call = watch.Call("Azure", "https://management.azure.com/subscriptions/s", "GET")
    call.started -= 3
    call.retrying("HTTP 503", 4.0)
    text = watch.notice(call)
    assert text.startswith("apimon: waiting for Azure at https://management.azure.com (GET /subscriptions/s): 3 s")
    assert "retrying (1 retry so far, last failure: HTTP 503), next attempt in 4 s" in text


def test_global_options_move_before_the_command():
    assert hoist(["plan", "p.yaml", "--timeout", "5", "-v", "--json"]) == ["--timeout", "5", "-v", "plan", "p.yaml",
                                                                            "--json"]
    assert hoist(["validate", "--allow-endpoint=a.example", "p.yaml"]) == ["--allow-endpoint=a.example", "validate",
                                                                           "p.yaml"]
    assert hoist(["plan", "--", "-v"]) == ["plan", "--", "-v"]
