"""The NATS adapters' own wire paths (``eventbus_nats.wire``): the header block
they write, the header parser they install on nats-py's client, and a batch
whose messages carry values nats-py would have had to clean up.

The parser cases need no server; the round trips run on the session's NATS.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest
from eventbus_nats import NatsAdapter, NatsCoreAdapter
from eventbus_nats.wire import _parse_header_lines, header_block
from nats.aio.client import Client

from eventbus.adapter import SubscribeOptions
from eventbus.envelope import Envelope
from integration_tests import harness

NATS_PARSE = Client._parse_header_lines

BLOCKS = [
    b"ce-id: 1\r\nce-type: t\r\n\r\n",
    b"a b: c\r\nx: y\r\n\r\n",  # whitespace inside a name: that line is skipped
    b"a:b\r\n\r\n",  # no space after the colon
    b"a: \r\n\r\n",  # empty value
    b"a:  b \r\n\r\n",  # value with surrounding whitespace: stripped
    b"a:b: c\r\n\r\n",  # the name ends at the first colon
    b"\xc3\xa9: x\r\nb: \xc3\xa9\r\n\r\n",  # non-ASCII name (skipped) and value
    b"k: v\r\nnocolon\r\n\r\n",
    b"k: v1\r\nk: v2\r\n\r\n",  # the last one wins
    b": v\r\n\r\n",
    b"k: v\r\n",  # no closing empty line
    b"k:\tv\r\n\r\n",
]


@pytest.mark.parametrize("raw", BLOCKS)
def test_parser_reads_what_nats_py_reads(raw: bytes) -> None:
    assert _parse_header_lines(raw) == NATS_PARSE(raw)


def test_header_block_turns_line_breaks_into_spaces() -> None:
    block = header_block({"ce-id": "1", "ce-subject": " a\r\nb\n", "x": "y"})
    assert block == b"NATS/1.0\r\nce-id: 1\r\nce-subject: a  b\r\nx: y\r\n\r\n"
    assert _parse_header_lines(block[len(b"NATS/1.0\r\n") :]) == {
        "ce-id": "1",
        "ce-subject": "a  b",
        "x": "y",
    }


def run(scenario: Coroutine[Any, Any, None], timeout: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


@pytest.mark.broker("nats")
@pytest.mark.parametrize("scheme", ["nats", "nats+core"])
def test_a_value_with_a_line_break_does_not_break_the_batch(
    nats_endpoint: harness.Endpoint, scheme: str
) -> None:
    """A header value with CR/LF is percent-encoded (the CloudEvents NATS binding), so
    it arrives as it was sent, and the rest of the batch written in the same buffer
    arrives intact and in order."""
    url = f"{scheme}://{nats_endpoint.host}:{nats_endpoint.port}"

    async def scenario() -> None:
        topic = f"wire-{uuid.uuid4().hex[:10]}"
        adapter = NatsAdapter(url) if scheme == "nats" else NatsCoreAdapter(url)
        await adapter.connect()
        subscription = await adapter.subscribe(
            topic, SubscribeOptions(group="g", prefetch=16, start_from="earliest")
        )
        batch = [
            Envelope.create(
                type="t",
                source="s",
                data=b'{"n":%d}' % n,
                subject="line\r\nbreak" if n == 1 else f"s{n}",
            )
            for n in range(4)
        ]
        await adapter.publish(topic, batch)
        got = []
        async for delivery in subscription:
            assert delivery.envelope is not None, delivery.decode_error
            got.append(delivery.envelope)
            await delivery.ack()
            if len(got) == len(batch):
                break
        assert [e.id for e in got] == [e.id for e in batch]
        assert [e.subject for e in got] == ["s0", "line\r\nbreak", "s2", "s3"]
        assert [e.data for e in got] == [e.data for e in batch]
        await subscription.close()
        await adapter.close()

    run(scenario())
