"""The plan's `events` block: parsed into EventsConfig, every problem located, secrets masked, the endpoint rule."""

from __future__ import annotations

import base64

from conftest import write_plan

from apimon_cli.events.config import EventsConfig
from apimon_cli.events.types import REQUEST, WEBHOOK_DEFAULT_TYPES
from apimon_cli.planfile.loader import load_plans

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
HEAD = """
apimon: 1
target: {provider: local}
products:
  free: {display_name: Free}
"""


def _plan(tmp_path, events: str):
    return write_plan(tmp_path / "plan.yaml", HEAD + events)


def test_full_block_is_parsed(tmp_path):
    path = _plan(tmp_path, """
events:
  kafka:
    bootstrap_servers: "b-1.kafka.example.com:9096,b-2.kafka.example.com:9096"
    topic: usage.events
    security: {protocol: SASL_SSL, sasl_mechanism: SCRAM-SHA-512, username: apimon, password: {from_env: KPW}}
  webhook:
    url: https://hooks.example.com/apimon
    secret: {from_env: WHSEC}
  quota_alerts: [100, 50]
""")
    env = {"KPW": "kafka-password-1", "WHSEC": SECRET,
           "APIMON_ALLOW_ENDPOINTS": "b-1.kafka.example.com:9096,b-2.kafka.example.com,hooks.example.com"}
    loaded = load_plans([str(path)], env=env)
    assert loaded.errors == []
    ev = loaded.desired.events
    assert isinstance(ev, EventsConfig)
    assert ev.kafka.topic == "usage.events" and ev.kafka.password == "kafka-password-1"
    assert ev.kafka.client_config()["security.protocol"] == "sasl_ssl"
    assert ev.webhook.types == WEBHOOK_DEFAULT_TYPES and REQUEST not in ev.webhook.types
    assert ev.quota_alerts == (50, 100)
    assert {"kafka-password-1", SECRET} <= loaded.secrets
    assert "kafka-password-1" not in repr(ev) and SECRET not in repr(ev)


def test_defaults(tmp_path):
    loaded = load_plans([str(_plan(tmp_path, "events: {kafka: {bootstrap_servers: 'localhost:9092'}}\n"))], env={})
    assert loaded.errors == []
    ev = loaded.desired.events
    assert ev.kafka.topic == "apimon.events" and ev.webhook is None and ev.quota_alerts == (80, 100)
    assert load_plans([str(write_plan(tmp_path / "none.yaml", HEAD))], env={}).desired.events is None


def test_problems_are_located(tmp_path, cli):
    _plan(tmp_path, """
events:
  kafka:
    bootstrap_servers: "nohost"
    topic: "bad topic"
    security: {protocol: SASL_SSL, username: u, password: {from_env: KPW}}
  webhook:
    url: https://hooks.example.com/apimon
    secret: {from_env: WHSEC}
    types: [com.apimon.quota.threshold]
  quota_alerts: [80, 101, 80]
""")
    r = cli("validate", "plan.yaml", cwd=tmp_path, env={"WHSEC": "not base64 !!"})
    assert r.code == 1
    lines = r.stderr.splitlines()
    assert "plan.yaml:8:24: error: events.kafka.bootstrap_servers: must be host:port[,host:port]" in lines[0]
    assert "plan.yaml:9:12: error: events.kafka.topic: invalid Kafka topic name 'bad topic'" in lines[1]
    assert "events.kafka.security.sasl_mechanism: protocol SASL_SSL needs a sasl_mechanism" in r.stderr
    assert "events.kafka.security.password.from_env: environment variable KPW is not set" in r.stderr
    assert ("events.webhook.url: https://hooks.example.com/apimon is not the vendor's public endpoint and is not in "
            "APIMON_ALLOW_ENDPOINTS") in r.stderr
    assert "APIMON_ALLOW_ENDPOINTS=hooks.example.com:443" in r.stderr
    assert "events.webhook.secret.from_env: environment variable WHSEC is not a Standard Webhooks secret" in r.stderr
    assert "events.quota_alerts[1]: must be a percentage of the quota, 1 to 100; got 101" in r.stderr
    assert "events.quota_alerts[2]: 80 is listed twice" in r.stderr
    assert "Traceback" not in r.stderr


def test_endpoint_rule(tmp_path, cli):
    _plan(tmp_path, """
events:
  webhook: {url: "http://127.0.0.1:8999/hook", secret: {from_env: WHSEC}}
  kafka:
    bootstrap_servers: "broker.example.com:9092"
    security: {protocol: SASL_PLAINTEXT, sasl_mechanism: PLAIN, username: u, password: {from_env: KPW}}
""")
    env = {"WHSEC": SECRET, "KPW": "pw-123456"}
    r = cli("validate", "plan.yaml", cwd=tmp_path, env=env)
    assert r.code == 1
    assert "events.webhook.url: http://127.0.0.1:8999/hook is a loopback address and is not in" in r.stderr
    assert "APIMON_ALLOW_ENDPOINTS=127.0.0.1:8999" in r.stderr
    assert "events.kafka.bootstrap_servers: broker.example.com:9092 is not the vendor's public endpoint" in r.stderr
    # listed loopback is accepted (tests); a listed host still needs TLS
    r = cli("validate", "plan.yaml", cwd=tmp_path,
            env=env | {"APIMON_ALLOW_ENDPOINTS": "127.0.0.1:8999,broker.example.com:9092"})
    assert "events.webhook.url" not in r.stderr
    assert ("broker.example.com:9092 is listed in APIMON_ALLOW_ENDPOINTS but uses SASL_PLAINTEXT; the SASL "
            "password travels only over TLS: use protocol SASL_SSL") in r.stderr
    # no credential, no rule: a plaintext Kafka without SASL may be anywhere
    write_plan(tmp_path / "plain.yaml", HEAD + "events: {kafka: {bootstrap_servers: 'kafka.internal:9092'}}\n")
    assert cli("validate", "plain.yaml", cwd=tmp_path).code == 0


def test_secrets_are_masked_in_output(tmp_path, cli):
    _plan(tmp_path, """
events:
  webhook: {url: "http://127.0.0.1:8999/hook", secret: {from_env: WHSEC}}
  kafka: {bootstrap_servers: "${env:KAFKA_BOOTSTRAP}"}
""")
    env = {"WHSEC": SECRET, "KAFKA_BOOTSTRAP": "kafka-secret-host:9092", "APIMON_ALLOW_ENDPOINTS": "127.0.0.1:8999"}
    r = cli("plan", "plan.yaml", "--json", cwd=tmp_path, env=env)
    assert SECRET not in r.output and "kafka-secret-host" not in r.output
