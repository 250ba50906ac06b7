"""Key actions are published as CloudEvents (com.apimon.key.*) to the plan's webhook, never with a key value."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from conftest import run_cli, write_plan

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "events"))
from helpers import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_rotate_revoke_and_finish_publish_key_events(tmp_path):
    hook = WebhookReceiver()
    try:
        plan = write_plan(tmp_path / "plan.yaml", f"""
apimon: 1
target: {{provider: local, local: {{state_dir: state}}}}
events:
  webhook: {{url: "{hook.url}", secret: {{from_env: WHSEC}}}}
products:
  pro: {{display_name: Pro, pricing: {{model: free}}}}
subscribers:
  acme: {{product: pro}}
""")
        env = {"WHSEC": SECRET, "APIMON_ALLOW_ENDPOINTS": hook.hostport}
        assert run_cli("apply", str(plan), "--auto-approve", env=env).code == 0
        hook.received.clear()
        r = run_cli("keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1h", env=env)
        assert r.code == 0, r.output
        r = run_cli("keys", "revoke", "acme", "--plan", str(plan), env=env)
        assert r.code == 0, r.output
        events = [e for got in hook.received for e in _events(got.body)]
        assert [e["type"] for e in events] == ["com.apimon.key.created", "com.apimon.key.rotated",
                                               "com.apimon.key.revoked"]
        assert all(e["subject"] == "acme" and len(e["data"]["key_last4"]) == 4 for e in events)
        with __import__("sqlite3").connect(tmp_path / "state" / "state.db") as conn:
            key = conn.execute("SELECT api_key FROM subscribers").fetchone()[0]
        assert all(key not in got.body.decode() for got in hook.received)
    finally:
        hook.close()


def _events(body: bytes) -> list[dict]:
    data = json.loads(body)
    return data if isinstance(data, list) else [data]


def test_key_expiring_is_published_once_at_the_configured_time_before_the_end(tmp_path):
    hook = WebhookReceiver()
    try:
        text = f"""
apimon: 1
target: {{provider: local, local: {{state_dir: state}}}}
events:
  webhook: {{url: "{hook.url}", secret: {{from_env: WHSEC}}}}
  key_expiring: NOTICE
products:
  pro: {{display_name: Pro, pricing: {{model: free}}}}
subscribers:
  acme: {{product: pro}}
"""
        plan = write_plan(tmp_path / "plan.yaml", text.replace("NOTICE", "1h"))
        env = {"WHSEC": SECRET, "APIMON_ALLOW_ENDPOINTS": hook.hostport}
        assert run_cli("apply", str(plan), "--auto-approve", env=env).code == 0
        r = run_cli("keys", "rotate", "acme", "--plan", str(plan), "--overlap", "3h", env=env)
        assert r.code == 0, r.output
        hook.received.clear()

        def expiring() -> list[dict]:
            assert run_cli("keys", "finish", str(plan), env=env).code == 0
            return [e for got in hook.received for e in _events(got.body) if e["type"] == "com.apimon.key.expiring"]

        assert expiring() == []  # 3 hours left, notice 1h
        write_plan(plan, text.replace("NOTICE", "4h"))
        assert len(expiring()) == 1  # within 4 hours of the end
        assert len(expiring()) == 1  # once
        bad = write_plan(tmp_path / "bad.yaml", text.replace("NOTICE", "4 hours"))
        r = run_cli("validate", str(bad))
        assert r.code == 1 and "events.key_expiring" in r.output and "24h" in r.output, r.output
    finally:
        hook.close()
