"""Shared helpers for the Apigee provider tests (imported by the other test_apigee_* modules).

``OrgAppsFake`` adds the organization-level app list (``apigee.organizations.apps.list``), which the shared
ApigeeFake does not implement yet, following the discovery document: ``expand``, ``includeCred``,
``status`` and ``keyStatus`` (both default ``approved``), ``pageSize`` (<= 1000) and ``pageToken``, and
items carrying ``developerEmail``. ASSUMED: ``keyStatus`` keeps apps that have at least one credential
with that status; the page token is an opaque offset.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fakes.apigee import ApigeeFake, _bad_request, _prune  # noqa: E402

ORG = "acme"
TOKEN = "test-token"
MANAGED = [{"name": "apimon-managed", "value": "true"}]


class OrgAppsFake(ApigeeFake):
    """ApigeeFake + GET organizations/{org}/apps (expand, includeCred, status, keyStatus, paging)."""

    def _handler_table(self) -> dict:
        table = super()._handler_table()
        table["apigee.organizations.apps.list"] = self._org_apps_list
        return table

    def _org_apps_list(self, ctx):
        status = ctx.q("status") or "approved"
        key_status = ctx.q("keyStatus") or "approved"
        size = int(ctx.q("pageSize") or 1000)
        if size < 1:
            raise _bad_request("pageSize must be positive", "pageSize")
        size = min(size, 1000)
        offset = int(ctx.q("pageToken") or 0)
        rows = []
        for email, apps in self.apps.items():
            for app in apps.values():
                if app.get("status", "approved") != status:
                    continue
                creds = app.get("credentials", [])
                if creds and not any(c.get("status", "approved") == key_status for c in creds):
                    continue
                if not creds and key_status != "approved":
                    continue
                rows.append((email, app))
        rows.sort(key=lambda r: r[1]["appId"])
        page = rows[offset:offset + size]
        items = []
        for email, app in page:
            if ctx.qbool("expand"):
                item = copy.deepcopy(app)
                item["developerEmail"] = email
                if not ctx.qbool("includeCred"):
                    item.pop("credentials", None)
            else:
                item = {"appId": app["appId"]}
            items.append(item)
        out = {"app": items}
        if offset + size < len(rows):
            out["nextPageToken"] = str(offset + size)
        return 200, _prune(out)


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv("APIMON_APIGEE_TOKEN", TOKEN)
    monkeypatch.delenv("APIMON_APIGEE_PAGE_SIZE", raising=False)


def plan_text(endpoint: str, products: str, subscribers: str = "{}", billing: str = "",
              environments: str = "[prod]") -> str:
    """A plan file for the fake (products/subscribers as YAML block text, already indented by 2)."""
    return (
        "apimon: 1\n"
        f"target:\n  provider: apigee\n  apigee: {{organization: {ORG}, environments: {environments}, "
        f"endpoint: '{endpoint}'}}\n"
        + (f"billing: {billing}\n" if billing else "")
        + f"products:\n{products}\n"
        + (f"subscribers:\n{subscribers}\n" if subscribers.strip() != "{}" else "subscribers: {}\n")
    )


def make_run(path: Path, **kw):
    """engine.make_plan on one plan file (in-process)."""
    from apimon_cli.reconcile.engine import make_plan

    return make_plan([str(path)], **kw)


def apply_plan(path: Path, *, adopt: bool = False, now_ms: int | None = None):
    """Plan and apply in-process; returns (run, report). Fails the test on any failed change."""
    run = make_run(path, adopt=adopt)
    try:
        if now_ms is not None:
            run.provider.now_ms = lambda: now_ms
        assert not run.changes.conflicts, run.changes.conflicts
        from apimon_cli.reconcile.engine import apply_changes

        report = apply_changes(run.provider, run.changes.changes, run.live)
    finally:
        run.provider.close()
    assert not report.failed, [o.message for o in report.failed]
    return run, report


def replan(path: Path):
    run = make_run(path)
    run.provider.close()
    return run


def seed_env() -> dict:
    return {"APIMON_APIGEE_TOKEN": TOKEN}


def test_org_apps_fake_lists_pages_and_filters():
    import requests

    with OrgAppsFake(org=ORG) as fake:
        fake.add_product("gold")
        for i in range(5):
            fake.add_app(f"d{i}@example.com", f"app{i}", api_products=["gold"])
        fake.apps["d0@example.com"]["app0"]["credentials"][0]["status"] = "revoked"
        url = f"{fake.endpoint}/v1/organizations/{ORG}/apps"
        h = {"Authorization": "Bearer t"}
        first = requests.get(url, params={"expand": "true", "includeCred": "true", "pageSize": "3"},
                             headers=h, timeout=5).json()
        assert len(first["app"]) == 3 and first["nextPageToken"] == "3"
        assert all(a["developerEmail"].endswith("@example.com") for a in first["app"])
        second = requests.get(url, params={"expand": "true", "pageSize": "3", "pageToken": "3"},
                              headers=h, timeout=5).json()
        assert len(second["app"]) == 1 and "nextPageToken" not in second  # app0's key is revoked
        assert "credentials" not in second["app"][0]
        revoked = requests.get(url, params={"expand": "true", "keyStatus": "revoked"}, headers=h, timeout=5).json()
        assert [a["name"] for a in revoked["app"]] == ["app0"]

