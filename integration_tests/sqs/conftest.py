"""The SQS adapter's own tests reach moto_server (or ``EVENTBUS_TEST_SQS_URL``) through
the shared harness; the emulator takes any credentials, so dummy ones are set
unless real ones are in the environment."""

from __future__ import annotations

import os

import pytest

from integration_tests import harness


@pytest.fixture(scope="session")
def sqs_url(sqs_endpoint: harness.Endpoint) -> str:
    """The emulator URL with short polls, for quick closes."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    return f"{sqs_endpoint.url}&wait_seconds=1"
