"""Broker CPU per event: produces, then consumes, EVENTS usage-sized records (900 bytes, idempotent producer, 3
partitions) through a Kafka-protocol broker and reads the broker process's CPU time from /proc around each phase.

    python3 -m venv /tmp/kv && /tmp/kv/bin/pip install confluent-kafka
    /tmp/kv/bin/python bench/broker_events.py 127.0.0.1:9092 "$(pgrep -f 'tansu broker')" 30000

Used for the broker build profile's figures in bench/REPORT.md (two rounds against each build).
"""

import os
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

brokers, pid, events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
topic = f"bench-{int(time.time() * 1000)}"
for future in AdminClient({"bootstrap.servers": brokers}).create_topics([NewTopic(topic, 3, 1)]).values():
    future.result()


def cpu_seconds():
    fields = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


payload = b"x" * 900
producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
cpu, started = cpu_seconds(), time.time()
for i in range(events):
    while True:
        try:
            producer.produce(topic, payload, key=str(i % 7))
            break
        except BufferError:
            producer.poll(0.01)
    if i % 1000 == 0:
        producer.poll(0)
producer.flush(60)
took = time.time() - started
print(f"produce {events} in {took:.2f}s = {events / took:.0f}/s, broker CPU {1e6 * (cpu_seconds() - cpu) / events:.1f} us/event")

consumer = Consumer({"bootstrap.servers": brokers, "group.id": topic, "auto.offset.reset": "earliest", "enable.auto.commit": False})
consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
read, cpu, started = 0, cpu_seconds(), time.time()
while read < events and time.time() - started < 60:
    read += len([m for m in consumer.consume(1000, 1.0) if not m.error()])
print(f"consume {read} in {time.time() - started:.2f}s, broker CPU {1e6 * (cpu_seconds() - cpu) / max(read, 1):.1f} us/event")
