"""Contenders on SQS/SNS (moto_server unless a URL is given): eventbus, and a raw
aioboto3 loop doing the same batched work. FastStream has no SQS broker.

Both use the same topology, made before the clock starts: an SNS topic and one
SQS queue subscribed to it with raw delivery. Both publish with ``PublishBatch``
(10 per request, requests gathered), receive with long polls of 10 on the same
number of receivers, validate each body into the same pydantic model and delete
what they handled with ``DeleteMessageBatch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import fair
from runner import PROBE, Contender, Counter, Tick, Timing, chunks

from eventbus import EventBus

EVENTBUS = "eventbus"
RAW = "raw aioboto3 (batched)"
FAIR = "raw aioboto3 + CloudEvents"


@dataclass(frozen=True)
class Broker:
    """The emulator (or AWS) under test; ``receivers`` long-poll loops per consumer."""

    url: str
    endpoint: str | None
    region: str
    receivers: int
    timeout: float

    def client(self, session: Any, service: str) -> Any:
        return session.client(service, region_name=self.region, endpoint_url=self.endpoint)

    @property
    def bus_url(self) -> str:
        joiner = "&" if "?" in self.url else "?"
        return f"{self.url}{joiner}receivers={self.receivers}&wait_seconds=1"


def resolve(arg: str | None, receivers: int, timeout: float) -> Broker:
    """--url, else $EVENTBUS_BENCH_SQS_URL, else a moto_server the test harness starts."""
    url = arg or os.environ.get("EVENTBUS_BENCH_SQS_URL", "").strip()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    if not url:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        os.environ["EVENTBUS_TEST_METHODS"] = "process"
        from integration_tests.harness import get_endpoint  # stops what it started at exit

        url = get_endpoint("sqs").url
        print(f"broker: {url} (moto_server)", file=sys.stderr)
    from eventbus_sqs import SqsSettings

    settings = SqsSettings.from_url(url)
    return Broker(url, settings.endpoint_url, str(settings.region), receivers, timeout)


async def eventbus_case(
    broker: Broker, events: Sequence[Tick], *, chunk: int, concurrency: int
) -> Timing:
    """``EventBus.from_url`` (defaults plus ``receivers``); ``publish_many`` chunks gathered."""
    topic = f"bench-eventbus-{uuid.uuid4().hex[:12]}"
    counter = Counter(len(events))
    bus = EventBus.from_url(broker.bus_url, source="bench")

    @bus.subscribe(topic, group="bench", concurrency=concurrency)
    async def handle(event: Tick) -> None:
        counter.see(event)

    async with bus:
        await bus.publish(PROBE, topic=topic)
        await counter.wait_probe(EVENTBUS, broker.timeout)
        counter.start()
        await asyncio.gather(
            *(bus.publish_many(part, topic=topic) for part in chunks(events, chunk))
        )
        counter.mark_published()
        await counter.wait_done(EVENTBUS, broker.timeout)
    return counter.timing()


async def _raw_consume(sqs: Any, queue: str, counter: Counter, cloudevents: bool) -> None:
    while not counter.done.is_set():
        reply = await sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = reply.get("Messages", [])
        for message in messages:
            if cloudevents:
                counter.see(fair.read_structured(message["Body"]))
            else:
                counter.see(Tick.model_validate_json(message["Body"]))
        if messages:
            await sqs.delete_message_batch(
                QueueUrl=queue,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )


async def raw_case(broker: Broker, events: Sequence[Tick], *, cloudevents: bool = False) -> Timing:
    """PublishBatch requests gathered; receivers that validate and batch-delete.

    ``cloudevents``: the fair contender, each body the structured-mode document the
    SQS adapter sends (``fair.structured``, built by hand per event) and read back."""
    contender = FAIR if cloudevents else RAW
    name = f"bench-raw-{uuid.uuid4().hex[:12]}"
    counter = Counter(len(events))
    session = aioboto3.Session()
    async with broker.client(session, "sns") as sns, broker.client(session, "sqs") as sqs:
        arn = (await sns.create_topic(Name=name))["TopicArn"]
        queue = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        queue_arn = (await sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        await sqs.set_queue_attributes(
            QueueUrl=queue,
            Attributes={
                "Policy": json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": "sns.amazonaws.com"},
                                "Action": "sqs:SendMessage",
                                "Resource": queue_arn,
                                "Condition": {"ArnEquals": {"aws:SourceArn": arn}},
                            }
                        ],
                    }
                )
            },
        )
        await sns.subscribe(
            TopicArn=arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true"},
        )
        receivers = [
            asyncio.create_task(_raw_consume(sqs, queue, counter, cloudevents))
            for _ in range(broker.receivers)
        ]
        try:
            encode = fair.structured if cloudevents else Tick.to_bytes
            await sns.publish(TopicArn=arn, Message=encode(PROBE).decode())
            await counter.wait_probe(contender, broker.timeout)
            counter.start()
            bodies = [encode(event).decode() for event in events]
            await asyncio.gather(
                *(
                    sns.publish_batch(
                        TopicArn=arn,
                        PublishBatchRequestEntries=[
                            {"Id": str(i), "Message": body} for i, body in enumerate(part)
                        ],
                    )
                    for part in chunks(bodies, 10)
                )
            )
            counter.mark_published()
            await counter.wait_done(contender, broker.timeout)
        finally:
            for task in receivers:
                task.cancel()
            for task in receivers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return counter.timing()


def contenders(broker: Broker, *, chunk: int, concurrency: int) -> list[Contender]:
    return [
        Contender(
            EVENTBUS,
            lambda ev: eventbus_case(broker, ev, chunk=chunk, concurrency=concurrency),
            ours=True,
        ),
        Contender(FAIR, lambda ev: raw_case(broker, ev, cloudevents=True)),
        Contender(RAW, lambda ev: raw_case(broker, ev)),
    ]
