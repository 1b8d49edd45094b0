"""Fixtures of the interop tests: the harness's brokers, as the URLs eventbus and its
peers (FastStream, the raw clients) need."""

from __future__ import annotations

import os

import pytest

from integration_tests import harness


@pytest.fixture(scope="session")
def sqs_url(sqs_endpoint: harness.Endpoint) -> str:
    """The emulator URL with short polls; the emulator takes any credentials."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    return f"{sqs_endpoint.url}&wait_seconds=1"
