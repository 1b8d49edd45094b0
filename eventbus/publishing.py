"""The publishing side of the bus: building envelopes, batches over several topics,
and the bounded retry while the broker connection is down."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

from eventbus.adapter import Adapter
from eventbus.backoff import Backoff
from eventbus.context import INHERIT, ParentOption, current_envelope
from eventbus.envelope import (
    JSON,
    Envelope,
    _build,
    _build_many,
    new_id,
    new_ids,
    utcnow,
    validate_extension_name,
)
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    ConfigurationError,
    PublishError,
    UsageError,
)
from eventbus.events import Command, Message
from eventbus.payloads import PayloadFormat, encode_payload
from eventbus.wire import WireFormat, publish_encoded

PUBLISH_BACKOFF = Backoff(initial=0.05, max_delay=1.0)

TraceRoot = Callable[[str], "tuple[str, str | None] | None"]
"""Asked with a topic for the ``(traceparent, tracestate)`` of envelopes to it that take
none from their parent, before they are built (``EventBus.trace_root``); ``None``: none."""


def not_a_message(
    value: object, call: str = "publish", wanted: type[Message] = Message
) -> UsageError:
    """The error for giving ``call`` (``publish``, ``send``...) ``value``, which is not an
    instance of ``wanted``: what it is instead and how to write it."""
    noun = "a Command instance" if wanted is Command else "an Event or Command instance"
    if isinstance(value, type) and issubclass(value, wanted):
        what = f"the class {value.__name__}, not an instance: {call}({value.__name__}(...))"
    elif isinstance(value, type):
        what = f"the class {value.__name__}"
    elif _is_pydantic_model(value):
        name = type(value).__name__
        what = (
            f"{name} is a pydantic model but not an eventbus Event or Command: declare "
            f"it as class {name}(Event, type='...') (or Command) to publish it"
        )
    else:
        what = f"not {'None' if value is None else _a(type(value).__name__)}"
        if isinstance(value, dict):
            what += (
                "; build the event from it: OrderPlaced(**data) or OrderPlaced.model_validate(data)"
            )
    return UsageError(f"{call}() takes {noun} (e.g. OrderPlaced(order_id='1')); got {what}")


def check_command(command: object) -> None:
    """Refuse what ``send()`` cannot take: a non-message (:func:`not_a_message`) or an
    event, which is published, not sent to one group."""
    if not isinstance(command, Message):
        raise not_a_message(command, "send", Command)
    if not isinstance(command, Command):
        raise ConfigurationError(
            f"send() takes a Command; {type(command).__name__} is an event — publish it"
        )


def _is_pydantic_model(value: object) -> bool:
    return hasattr(type(value), "model_fields") and hasattr(value, "model_dump")


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def build_envelope(
    message: Message,
    source: str,
    *,
    key: str | None = None,
    parent: ParentOption = INHERIT,
    correlation_id: str | None = None,
    subject: str | None = None,
    extensions: dict[str, str] | None = None,
    payload_format: str | PayloadFormat | None = None,
    trace_root: TraceRoot | None = None,
    topic: str | None = None,
) -> Envelope:
    """The envelope for ``message`` from ``source`` (see ``EventBus.envelope_for``).

    The one-message case of :func:`build_envelopes`, written out: it is every
    ``publish``'s first step. ``payload_format``: the bus's default, for a class
    that names none (:mod:`eventbus.payloads`; ``None`` is JSON). ``trace_root``:
    asked with ``topic`` (the publish's) for the trace context when the parent gives
    none (tracing decides a new trace there, so the envelope is built carrying it,
    not copied to carry it)."""
    if not isinstance(message, Message):
        raise not_a_message(message)
    correlation, causation, traceparent, tracestate = _lineage(parent, correlation_id, extensions)
    if traceparent is None and trace_root is not None and topic is not None:
        started = trace_root(topic)
        if started is not None:
            traceparent, tracestate = started
    event_id = new_id()
    spec = type(message).__payload_format__ or payload_format
    if spec is None:
        data = message.to_bytes()  # JSON, the default: nothing more to say
    else:
        data, content_type, schema = encode_payload(message, spec)
    envelope = _build(
        event_id,
        message.event_type(),
        source,
        utcnow(),
        data,
        message.data_version(),
        key,
        subject,
        correlation or event_id,
        causation,
        traceparent,
        tracestate,
        dict(extensions) if extensions else {},
    )
    if spec is None or content_type is JSON:
        return envelope
    return envelope.evolve(datacontenttype=content_type, dataschema=schema)


def _lineage(
    parent: ParentOption, correlation_id: str | None, extensions: dict[str, str] | None
) -> tuple[str | None, str | None, str | None, str | None]:
    """What every envelope of one publish call takes from its parent (the envelope being
    handled, unless ``parent`` names one or is ``None``): the correlation id (``None``:
    each envelope's own id), the causation id, traceparent and tracestate. Checks the
    extension names first."""
    if parent is INHERIT:
        parent = current_envelope.get()
    if extensions:
        for name in extensions:
            validate_extension_name(name)
    if parent is None:
        return correlation_id, None, None, None
    correlation = correlation_id or parent.correlationid or parent.id
    return correlation, parent.id, parent.traceparent, parent.tracestate


def build_envelopes(
    messages: Sequence[Message],
    source: str,
    *,
    key: str | None = None,
    parent: ParentOption = INHERIT,
    correlation_id: str | None = None,
    subject: str | None = None,
    extensions: dict[str, str] | None = None,
    payload_format: str | PayloadFormat | None = None,
    trace_root: TraceRoot | None = None,
    topic: str | None = None,
) -> list[Envelope]:
    """One envelope per message, as :func:`build_envelope` builds each.

    What the batch shares is worked out once: the parent, the extension names,
    the time (one publish call, one time) and the random bits of the ids.
    ``trace_root`` is asked as :func:`build_envelope` asks it, when the batch goes to
    one topic (``topic``, else its one class's).
    """
    for message in messages:
        if not isinstance(message, Message):
            raise not_a_message(message, "publish_many")
    correlation, causation, traceparent, tracestate = _lineage(parent, correlation_id, extensions)
    if not messages:
        return []
    ids = new_ids(len(messages)) if len(messages) != 1 else [new_id()]
    kind = type(messages[0])
    bodies: list[bytes]
    same = all(type(message) is kind for message in messages)
    if traceparent is None and trace_root is not None:
        target = topic if topic is not None else kind.default_topic() if same else None
        started = trace_root(target) if target is not None else None
        if started is not None:
            traceparent, tracestate = started
    formatted = payload_format is not None or (
        kind.__payload_format__ if same else any(type(m).__payload_format__ for m in messages)
    )
    encoded: list[tuple[bytes, str, str | None]] = []
    if formatted:
        # A class or the bus names a payload format: each message's own encoding.
        encoded = [
            encode_payload(message, type(message).__payload_format__ or payload_format or "json")
            for message in messages
        ]
        types: Sequence[str] = [message.event_type() for message in messages]
        versions: Sequence[int] = [message.data_version() for message in messages]
        bodies = [data for data, _, _ in encoded]
    elif same:
        # One class (the common case): its type and version looked up once, and
        # its serializer called directly unless the class has its own to_bytes.
        types = [kind.event_type()] * len(messages)
        versions = [kind.data_version()] * len(messages)
        if kind.to_bytes is Message.to_bytes:
            to_json = kind.__pydantic_serializer__.to_json
            bodies = [to_json(message) for message in messages]
        else:
            bodies = [message.to_bytes() for message in messages]
    else:
        types = [message.event_type() for message in messages]
        versions = [message.data_version() for message in messages]
        bodies = [message.to_bytes() for message in messages]
    envelopes = _build_many(
        ids,
        types,
        versions,
        bodies,
        source,
        utcnow(),
        key,
        subject,
        correlation,
        causation,
        traceparent,
        tracestate,
        extensions,
    )
    if not encoded:
        return envelopes
    return [
        envelope
        if content_type is JSON
        else envelope.evolve(datacontenttype=content_type, dataschema=schema)
        for envelope, (_, content_type, schema) in zip(envelopes, encoded, strict=True)
    ]


async def publish_batch(
    publish: Callable[[str, Sequence[Envelope]], Awaitable[list[Envelope]]],
    messages: Sequence[Message],
    envelopes: list[Envelope],
    topic: str | None,
) -> list[Envelope]:
    """Publish ``envelopes`` (one per message) with one ``publish`` call per topic.

    Raises :class:`BatchPublishError` naming the failed indexes, the sent ones and
    the envelopes (same ids) when any topic failed, also when others went out.
    """
    if topic is None and messages:
        kind = type(messages[0])
        if all(type(message) is kind for message in messages):
            topic = messages[0].default_topic()  # one class, one topic
    if topic is not None:
        # One topic (the common case): one call, no per-message index lists.
        try:
            return list(await publish(topic, envelopes))
        except BatchPublishError as exc:
            failures: dict[int, Exception] = dict(exc.failures)
        except (PublishError, BrokerConnectionError) as exc:
            failures = dict.fromkeys(range(len(messages)), exc)
        _raise_failures(messages, envelopes, failures)
    by_topic: dict[str, list[int]] = defaultdict(list)
    for index, message in enumerate(messages):
        by_topic[message.default_topic()].append(index)
    failures = {}
    for name, indexes in by_topic.items():
        try:
            sent = await publish(name, [envelopes[i] for i in indexes])
            for i, envelope in zip(indexes, sent, strict=True):
                envelopes[i] = envelope
        except BatchPublishError as exc:
            failures.update({indexes[i]: err for i, err in exc.failures.items()})
        except (PublishError, BrokerConnectionError) as exc:
            # Other topics of the batch may have gone out already: report what
            # did, so a retry republishes only the rest, under the same ids.
            failures.update({i: exc for i in indexes})
    if failures:
        _raise_failures(messages, envelopes, failures)
    return envelopes


def _raise_failures(
    messages: Sequence[Message], envelopes: list[Envelope], failures: dict[int, Exception]
) -> NoReturn:
    failed_ids = [envelopes[i].id for i in sorted(failures)]
    raise BatchPublishError(
        f"{len(failures)} of {len(messages)} messages were not published "
        f"(ids {', '.join(failed_ids[:5])}{' ...' if len(failed_ids) > 5 else ''}); "
        "see .failures for each index and its error, .succeeded for those sent, "
        "and republish the failed .envelopes with publish_envelopes to keep their ids",
        failures,
        len(messages),
        envelopes,
    )


async def publish_with_retry(
    adapter: Adapter,
    topic: str,
    envelopes: Sequence[Envelope],
    timeout: float,
    wire: WireFormat | None = None,
) -> None:
    """Publish, retrying with backoff while the connection is down, for up to ``timeout``;
    as CloudEvents, or laid out by ``wire`` (:mod:`eventbus.wire`) when given."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    failed = 0
    while True:
        try:
            if wire is None:
                await adapter.publish(topic, envelopes)
            else:
                await publish_encoded(adapter, topic, envelopes, wire)
            return
        except BrokerConnectionError:
            # The delay only once an attempt failed: a publish that goes through (nearly
            # every one) computes none (iterating the backoff computed the first one).
            failed += 1
            delay = PUBLISH_BACKOFF.delay(failed)
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
