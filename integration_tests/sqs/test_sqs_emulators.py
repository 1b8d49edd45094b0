"""What keeps goaws out of the conformance suite, checked on the goaws the harness runs (#25).

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
