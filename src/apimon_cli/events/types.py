"""The CloudEvents types apimon publishes (``type`` attribute), and which sinks get which by default."""

from __future__ import annotations

REQUEST = "com.apimon.request"
QUOTA_THRESHOLD = "com.apimon.quota.threshold"
USAGE_DAILY = "com.apimon.usage.daily"
SUBSCRIBER_CREATED = "com.apimon.subscriber.created"
SUBSCRIBER_UPDATED = "com.apimon.subscriber.updated"
SUBSCRIBER_DELETED = "com.apimon.subscriber.deleted"
PRODUCT_CREATED = "com.apimon.product.created"
PRODUCT_UPDATED = "com.apimon.product.updated"
PRODUCT_DELETED = "com.apimon.product.deleted"
KEY_REVOKED = "com.apimon.key.revoked"
KEY_CREATED = "com.apimon.key.created"
KEY_ROTATED = "com.apimon.key.rotated"
KEY_EXPIRING = "com.apimon.key.expiring"

EVENT_TYPES: tuple[str, ...] = (
    REQUEST,
    QUOTA_THRESHOLD,
    USAGE_DAILY,
    SUBSCRIBER_CREATED,
    SUBSCRIBER_UPDATED,
    SUBSCRIBER_DELETED,
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    PRODUCT_DELETED,
    KEY_REVOKED,
    KEY_CREATED,
    KEY_ROTATED,
    KEY_EXPIRING,
)

#: the webhook's default: everything but the per-request firehose (a webhook is for notifications)
WEBHOOK_DEFAULT_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t != REQUEST)

DEFAULT_QUOTA_ALERTS: tuple[int, ...] = (80, 100)
