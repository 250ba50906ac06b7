"""The plan's ``events`` block as checked, resolved configuration (``EventsConfig`` on ``DesiredState``).

Secrets (the webhook secret, the Kafka password) come from the environment only; their values are added to
the plan's masked secrets by the loader. A URL that receives a credential follows the endpoint rule (issue
18, ``security.endpoints``): it comes from the plan only if it uses TLS on a host listed in
``APIMON_ALLOW_ENDPOINTS`` (``host[:port],...``); a loopback host is accepted, also without TLS, only when
listed (tests). The webhook (signed with the secret) and Kafka with SASL follow it; Kafka without SASL carries
no credential.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

from .types import DEFAULT_QUOTA_ALERTS, WEBHOOK_DEFAULT_TYPES

_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
_HOSTPORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str
    topic: str = "apimon.events"
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None

    def client_config(self) -> dict[str, str]:
        """librdkafka settings shared by the producer and the consumer (credentials included)."""
        conf = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.protocol.lower()}
        if self.protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism or "PLAIN"
            conf["sasl.username"] = self.username or ""
            conf["sasl.password"] = self.password or ""
        if self.ca_file:
            conf["ssl.ca.location"] = self.ca_file
        return conf


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str = field(repr=False)  # "whsec_<base64>" as given
    types: tuple[str, ...] = WEBHOOK_DEFAULT_TYPES

    @property
    def key(self) -> bytes:
        return decode_webhook_secret(self.secret)


@dataclass(frozen=True)
class EventsConfig:
    kafka: KafkaConfig | None = None
    webhook: WebhookConfig | None = None
    quota_alerts: tuple[int, ...] = DEFAULT_QUOTA_ALERTS
    key_expiring: timedelta = timedelta(hours=1)  # com.apimon.key.expiring this long before an old key's end

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(name for name in ("kafka", "webhook") if getattr(self, name) is not None)


def decode_webhook_secret(secret: str) -> bytes:
    """A Standard Webhooks secret: ``whsec_`` + base64 of the key bytes (the prefix is optional)."""
    text = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def build(spec, env: Mapping[str, str]) -> EventsConfig:
    """The configuration from a validated ``schema.EventsSpec``; unset secrets become '' (``check`` reports
    them)."""
    kafka = webhook = None
    if spec.kafka is not None:
        sec = spec.kafka.security
        kafka = KafkaConfig(
            bootstrap_servers=spec.kafka.bootstrap_servers.strip(),
            topic=spec.kafka.topic,
            protocol=sec.protocol if sec else "PLAINTEXT",
            sasl_mechanism=sec.sasl_mechanism if sec else None,
            username=sec.username if sec else None,
            password=env.get(sec.password.from_env, "") if sec and sec.password else None,
            ca_file=sec.ca_file if sec else None,
        )
    if spec.webhook is not None:
        w = spec.webhook
        webhook = WebhookConfig(
            url=w.url.strip(),
            secret=env.get(w.secret.from_env, ""),
            types=tuple(dict.fromkeys(w.types)) if w.types is not None else WEBHOOK_DEFAULT_TYPES,
        )
    from ..keys.durations import parse_duration

    return EventsConfig(kafka, webhook, tuple(sorted(set(spec.quota_alerts))),
                        parse_duration(getattr(spec, "key_expiring", None) or "1h"))


def secrets_of(config: EventsConfig | None) -> set[str]:
    if config is None:
        return set()
    out = {config.webhook.secret if config.webhook else "", config.kafka.password if config.kafka else ""}
    return {s for s in out if s}


# ---------------------------------------------------------------- checks


def check(spec, env: Mapping[str, str]) -> list[tuple[tuple, str]]:
    """Problems of a structurally valid ``events`` block: (path below ``events``, message)."""
    problems: list[tuple[tuple, str]] = []
    if spec.kafka is not None:
        problems += _check_kafka(spec.kafka, env)
    if spec.webhook is not None:
        problems += _check_webhook(spec.webhook, env)
    for i, pct in enumerate(spec.quota_alerts):
        if pct > 100:
            problems.append((("quota_alerts", i), f"must be a percentage of the quota, 1 to 100; got {pct}"))
    seen: set[int] = set()
    for i, pct in enumerate(spec.quota_alerts):
        if pct in seen:
            problems.append((("quota_alerts", i), f"{pct} is listed twice; list each threshold once"))
        seen.add(pct)
    return problems


def _secret_problem(ref, env: Mapping[str, str], what: str) -> str | None:
    name = ref.from_env
    if not _ENV_NAME_RE.fullmatch(name):
        return f"invalid environment variable name {name!r}; use letters, digits and _, not starting with a digit"
    if name not in env:
        return f"environment variable {name} is not set; set it to the {what}"
    if not env[name]:
        return f"environment variable {name} is empty; set it to the {what}"
    return None


def _check_kafka(k, env: Mapping[str, str]) -> list[tuple[tuple, str]]:
    out: list[tuple[tuple, str]] = []
    servers = [s.strip() for s in k.bootstrap_servers.split(",")]
    bad = [s for s in servers if not _HOSTPORT_RE.match(s) or not 0 < int(_HOSTPORT_RE.match(s).group(2)) < 65536]
    if not k.bootstrap_servers.strip() or bad:
        shown = bad[0] if bad and bad[0] else k.bootstrap_servers
        out.append((("kafka", "bootstrap_servers"),
                    f"must be host:port[,host:port] (e.g. broker-1.example.com:9092); got {shown!r}"))
        servers = []
    if not _TOPIC_RE.fullmatch(k.topic) or k.topic in (".", ".."):
        out.append((("kafka", "topic"),
                    f"invalid Kafka topic name {k.topic!r}; use 1-249 of a-z, A-Z, 0-9, '.', '_' and '-'"))
    sec = k.security
    if sec is None:
        return out
    sasl = sec.protocol.startswith("SASL")
    if sasl:
        if sec.sasl_mechanism is None:
            out.append((("kafka", "security", "sasl_mechanism"),
                        f"protocol {sec.protocol} needs a sasl_mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"))
        if not sec.username:
            out.append((("kafka", "security", "username"), f"protocol {sec.protocol} needs a username"))
        if sec.password is None:
            out.append((("kafka", "security", "password"),
                        f"protocol {sec.protocol} needs a password: password: {{from_env: VAR}}"))
        elif (msg := _secret_problem(sec.password, env, "SASL password")) is not None:
            out.append((("kafka", "security", "password", "from_env"), msg))
        scheme = "https" if sec.protocol == "SASL_SSL" else "http"
        for server in servers:
            problem = endpoint_problem(f"{scheme}://{server}", env, kafka=True)
            if problem:
                out.append((("kafka", "bootstrap_servers"), problem))
                break
    else:
        for name in ("sasl_mechanism", "username", "password"):
            if getattr(sec, name) is not None:
                out.append((("kafka", "security", name),
                            f"only used with protocol SASL_PLAINTEXT or SASL_SSL (protocol is {sec.protocol}); "
                            "remove it or set protocol: SASL_SSL"))
    return out


def _check_webhook(w, env: Mapping[str, str]) -> list[tuple[tuple, str]]:
    out: list[tuple[tuple, str]] = []
    parts = urlsplit(w.url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        out.append((("webhook", "url"), f"must be an https URL like https://hooks.example.com/apimon; got {w.url!r}"))
    elif (problem := endpoint_problem(w.url.strip(), env)) is not None:
        out.append((("webhook", "url"), problem))
    msg = _secret_problem(w.secret, env, "webhook secret (whsec_ followed by base64, e.g. `openssl rand -base64 32`)")
    if msg is None:
        try:
            key = decode_webhook_secret(env[w.secret.from_env])
        except (binascii.Error, ValueError):
            key = b""
            msg = (f"environment variable {w.secret.from_env} is not a Standard Webhooks secret: write whsec_ "
                   "followed by base64 (e.g. whsec_$(openssl rand -base64 32))")
        if msg is None and not 24 <= len(key) <= 64:
            msg = (f"the secret in {w.secret.from_env} is {len(key)} bytes; Standard Webhooks secrets are 24 to 64 "
                   "bytes (e.g. whsec_$(openssl rand -base64 32))")
    if msg is not None:
        out.append((("webhook", "secret", "from_env"), msg))
    if w.types is not None and not w.types:
        out.append((("webhook", "types"), "must list at least one event type (or leave it out: all but request)"))
    return out


# ---------------------------------------------------------------- the endpoint rule (issue 18)


def endpoint_problem(url: str, env: Mapping[str, str], *, kafka: bool = False) -> str | None:
    """The shared rule (``security.endpoints.check_endpoint``, no vendor default here): None if ``url`` may
    receive a credential. For Kafka, ``https://host:port`` stands for SASL_SSL and ``http://`` for
    SASL_PLAINTEXT, and the message speaks of the protocol instead of https."""
    from ..security.endpoints import check_endpoint

    problem = check_endpoint(url, None, env)
    if problem and kafka:
        problem = (problem.replace("https://", "").replace("http://", "")
                   .replace("is not https; credentials travel only over https",
                            "uses SASL_PLAINTEXT; the SASL password travels only over TLS: use protocol SASL_SSL"))
    return problem
