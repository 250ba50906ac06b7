"""Real-time usage events: CloudEvents 1.0 to Kafka and a webhook, with an on-disk outbox.

Light to import (the plan schema imports ``events.types``): confluent-kafka and requests are imported only
where an event is delivered or consumed.

- ``types``: the event type names; ``config``: the plan's ``events`` block, checked;
- ``cloudevent``: the envelope and the builders (never a key value, a secret or a query string);
- ``outbox``: SQLite, one row per event and sink still to deliver;
- ``sinks``: Kafka (confluent-kafka: idempotent, acks=all, batched) and the Standard Webhooks sink;
- ``delivery``: outbox -> sinks, for commands (bounded wait) and for the gateway (a thread);
- ``publish``: apply and usage pull -> events, after their changes are committed;
- ``gateway``: the gateway's bounded in-process queue, quota alerts, the delivery thread;
- ``consume``: ``apimon events consume``: request events -> the ledger's daily counts, exactly once.
"""
