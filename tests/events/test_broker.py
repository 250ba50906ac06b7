"""The broker fixture is a real Kafka-protocol broker, with the capabilities apimon relies on."""

from __future__ import annotations

import time

import broker
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

kafka = broker.fixture()


def test_idempotent_producer_and_partition_eof(kafka):
    kafka.create_topic("caps", partitions=3)
    errors = []
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5})
    for i in range(300):
        producer.produce("caps", key=f"k{i % 7}", value=f"v{i}".encode(),
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert producer.flush(15) == 0
    assert errors == []
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "caps", "enable.partition.eof": True,
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition("caps", p, 0) for p in range(3)])
    seen, eof = 0, set()
    deadline = time.monotonic() + 20
    while len(eof) < 3 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            assert msg.error().code() == KafkaError._PARTITION_EOF
            eof.add(msg.partition())
            continue
        seen += 1
    consumer.close()
    assert seen == 300 and eof == {0, 1, 2}
