"""security.endpoints: a URL that receives a credential comes from the plan only if allowed."""

from apimon_cli.security.endpoints import allowed_hosts, check_endpoint

DEFAULT = "https://api.stripe.com"


def test_the_vendors_public_default_is_allowed_without_listing():
    assert check_endpoint("https://api.stripe.com", DEFAULT, {}) is None
    assert check_endpoint("https://api.stripe.com:443/", DEFAULT, {}) is None


def test_any_other_host_needs_listing_outside_the_plan_and_https():
    why = check_endpoint("https://evil.example", DEFAULT, {})
    assert "APIMON_ALLOW_ENDPOINTS=evil.example:443" in why
    listed = {"APIMON_ALLOW_ENDPOINTS": "billing.corp.example"}
    assert check_endpoint("https://billing.corp.example", DEFAULT, listed) is None
    assert "not https" in check_endpoint("http://billing.corp.example", DEFAULT,
                                         {"APIMON_ALLOW_ENDPOINTS": "billing.corp.example"})
    # a listed port allows only that port
    env = {"APIMON_ALLOW_ENDPOINTS": "proxy.example:8443"}
    assert check_endpoint("https://proxy.example:8443", DEFAULT, env) is None
    assert check_endpoint("https://proxy.example:9443", DEFAULT, env) is not None


def test_loopback_only_when_listed_and_then_plain_http_is_fine():
    assert "loopback" in check_endpoint("http://127.0.0.1:9999", DEFAULT, {})
    assert "loopback" in check_endpoint("http://localhost:9999", DEFAULT, {})
    assert check_endpoint("http://127.0.0.1:9999", DEFAULT, {"APIMON_ALLOW_ENDPOINTS": "127.0.0.1:9999"}) is None
    assert check_endpoint("http://[::1]:9999", DEFAULT, {"APIMON_ALLOW_ENDPOINTS": "[::1]:9999"}) is None


def test_urls_with_credentials_or_odd_schemes_are_refused():
    env = {"APIMON_ALLOW_ENDPOINTS": "a.example"}
    assert check_endpoint("https://user:pw@a.example", DEFAULT, env) is not None
    assert check_endpoint("ftp://a.example", DEFAULT, env) is not None
    assert check_endpoint("not a url", DEFAULT, env) is not None
    assert allowed_hosts({"APIMON_ALLOW_ENDPOINTS": " A.example , b.example:81,,"}) == [("a.example", None),
                                                                                        ("b.example", 81)]
