"""``target.local``: the plan-file block of the local target."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ...planfile.schema import Strict, Text


class LocalLimits(Strict):
    """``target.local.limits``: where the gateway keeps rate-limit buckets and quota counters."""

    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: in the gateway process (one process per state); redis: shared by every "
        "gateway process on one Redis (README, Running it for a team).")
    url: Text | None = Field(None, description="redis://[:password@]host:port/db (backend: redis).")
    on_error: Literal["allow", "deny"] = Field(
        "allow", description="Redis unreachable: allow (admit without limits) or deny (503).")
    timeout: float = Field(0.25, gt=0, le=10, description="Seconds to wait for Redis per request (backend: redis).")
    key_prefix: Text = Field("apimon:", description="Prefix of every Redis key the gateway writes.")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        # a field error, so the message names target.local.limits.url at its line; the password masked
        if not url:
            return url
        from urllib.parse import urlsplit

        from ...ledger.pg import mask_url

        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL; got {mask_url(url)!r}")
        # what the gateway would otherwise find out only when it starts (an unexpected error), or never: a
        # database that is not a number is database 0, a unix:// without a path is TCP to localhost:6379
        parts = urlsplit(url)
        problem = None
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number in 0-65535)
        except ValueError:
            problem = "the port must be a number in 0-65535"
        if parts.scheme == "unix" and not parts.path:
            problem = "unix:// needs the socket's path, e.g. unix:///run/redis/redis.sock?db=0"
        elif parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
            problem = "the database (the path) must be a number, e.g. redis://127.0.0.1:6379/0"
        if problem is None and parts.query:  # options (socket_timeout=, db=, ...): as the gateway reads them,
            try:  # with redis-py's parser (redis extra; imported only for a URL with a query: ~0.15 s)
                from redis.connection import parse_url
            except ImportError:
                parse_url = None
            if parse_url is not None:
                try:
                    parse_url(url)
                except ValueError as exc:
                    problem = str(exc).rstrip(".")
        if problem:
            raise ValueError(f"{problem}; got {mask_url(url)!r}")
        return url

    @model_validator(mode="after")
    def _url_for_redis(self) -> LocalLimits:
        if self.backend == "redis" and not self.url:
            raise ValueError("backend redis needs a url, e.g. url: \"redis://127.0.0.1:6379/0\"")
        return self


class LocalOAuth2(Strict):
    """``target.local.oauth2``: the tokens `apimon gateway serve` issues (products with auth oauth2)."""

    issuer: Text | None = Field(None, description="The iss of issued tokens and the base of the token endpoint in "
                                "the metadata, e.g. https://api.example.com (default: the gateway's own URL). Set "
                                "it when the gateway runs behind a load balancer or with --workers.")
    signing_alg: Literal["RS256", "ES256"] = Field(
        "RS256", description="Algorithm of new signing keys (`apimon gateway rotate-signing-key` makes them).")


class LocalTarget(Strict):
    @field_validator("database")
    @classmethod
    def _database_url(cls, database: str | None) -> str | None:
        # a field error, so the message names target.local.database at its line; the password masked
        if database and not database.startswith(("postgresql://", "postgres://")):
            from ...ledger.pg import mask_url

            raise ValueError(f"must be a postgresql:// URL; got {mask_url(database)!r}")
        return database

    state_dir: Text = ".apimon"
    upstreams: dict[str, Text] = Field(
        default_factory=dict, description="API name -> upstream base URL, for `apimon gateway serve`."
    )
    database: Text | None = Field(
        None, description="postgresql://user@host:5432/db: keep the state (products, keys, usage counters) in "
        "PostgreSQL, shared by gateways on several hosts; default: the SQLite file in state_dir.")
    limits: LocalLimits | None = Field(None, description="Rate-limit and quota back end of `apimon gateway serve`.")
    oauth2: LocalOAuth2 | None = Field(None, description="OAuth 2.0 tokens of `apimon gateway serve`.")
