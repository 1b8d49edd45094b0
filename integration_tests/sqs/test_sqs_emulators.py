"""The SQS emulators besides moto, as the harness runs them (#25).

The ElasticMQ the harness runs keeps its queues on disk and its messages in memory:
its H2 message storage races with receives (harness/sqs_emulators.py), so the broker
restart case is declared an ElasticMQ limit; the first test holds that configuration.

What keeps goaws out of the conformance suite, checked on the goaws the harness runs.

goaws is the SNS fan-out emulator asked for besides moto, but v0.4.5 (the newest the Go
module proxy serves here) cannot serve any current AWS SDK: it reads only the Query
protocol, and botocore speaks the JSON protocol to SQS (AWS's default since November
2023); and it has no SNS ``PublishBatch`` (AWS has had it since 2021; goaws issue #270),
which the adapter publishes with. So no ``sqs-goaws`` target runs (docs/adapters/sqs.md).
This test fails once the goaws built here (``EVENTBUS_GOAWS_VERSION``) can do both: then
add the target to ``integration_tests/test_conformance.py``.
"""

from __future__ import annotations

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from botocore.parsers import ResponseParserError  # type: ignore[import-untyped]

from integration_tests import harness
from integration_tests.harness.probes import aws_credentials, sqs_settings


def _client(service: str, url: str) -> object:
    endpoint, region = sqs_settings(url)
    config = Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10)
    return boto3.client(
        service, endpoint_url=endpoint, region_name=region, config=config, **aws_credentials()
    )


def test_elasticmq_restart_keeps_queues_and_forgets_messages() -> None:
    elasticmq = harness.require("elasticmq")
    if elasticmq.restart is None:
        pytest.skip("EVENTBUS_TEST_ELASTICMQ_URL names an ElasticMQ the harness does not run")
    sqs = _client("sqs", elasticmq.url)
    url = sqs.create_queue(QueueName="eventbus-elasticmq-restart")["QueueUrl"]  # type: ignore[attr-defined]
    sqs.purge_queue(QueueUrl=url)  # type: ignore[attr-defined]
    sqs.send_message(QueueUrl=url, MessageBody="before the restart")  # type: ignore[attr-defined]
    elasticmq.restart()
    sqs = _client("sqs", elasticmq.url)
    assert sqs.get_queue_url(QueueName="eventbus-elasticmq-restart")["QueueUrl"]  # type: ignore[attr-defined]
    reply = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)  # type: ignore[attr-defined]
    assert not reply.get("Messages"), "ElasticMQ kept a message: is its H2 storage on again?"


def test_goaws_answers_sns_but_not_the_sqs_json_protocol_nor_publish_batch() -> None:
    goaws = harness.require("goaws")
    sns, sqs = _client("sns", goaws.url), _client("sqs", goaws.url)
    arn = sns.create_topic(Name="eventbus-goaws-check")["TopicArn"]  # type: ignore[attr-defined]
    sns.publish(TopicArn=arn, Message="one")  # type: ignore[attr-defined]
    with pytest.raises(ClientError) as json_protocol:
        sqs.list_queues()  # type: ignore[attr-defined]
    assert json_protocol.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # An unknown action is a plain-text "Bad Request", which botocore cannot parse.
    with pytest.raises(ResponseParserError, match="Bad Request"):
        sns.publish_batch(  # type: ignore[attr-defined]
            TopicArn=arn, PublishBatchRequestEntries=[{"Id": "1", "Message": "one"}]
        )
