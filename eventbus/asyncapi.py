"""The AsyncAPI 3.0 document of a service: what it consumes and publishes, on which broker.

::

    document = asyncapi_document(bus, version="1.4.0")   # a dict, ready for json.dumps

Also ``eventbus asyncapi app:bus [--format yaml|json]``. What goes in:

- **channels**: one per topic the service subscribes to or declares it publishes to;
- **messages**: one per event or command class, under its stable type name, with the
  class's JSON schema (pydantic's; shared models under ``components/schemas``), its data
  version (``x-eventbus-version``), its docstring, the CloudEvents attributes it travels
  with as headers (named as the broker's binding names them; none in CloudEvents
  structured mode, ``?mode=structured`` or a broker without headers, where the
  description says the body is the CloudEvents JSON document), and examples: the model's
  own (``json_schema_extra={"examples": [...]}``), else one built from its fields'
  ``examples``;
- **operations**: ``receive`` per subscription (topic, group), ``send`` per topic of the
  classes declared with ``bus.publishes(...)`` (a choreography step declares what it
  returns);
- **servers**: the bus's URL with its credentials and query options removed;
- **bindings** where AsyncAPI defines them for the broker: Kafka (topic, consumer group,
  partition key), AMQP (the topic exchange, acknowledgement, routing key = the type), NATS
  (the queue group). Redis and SQS get none: AsyncAPI's Redis binding has no fields, and
  the SQS binding names queues the adapter derives (hashed where AWS refuses a name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pydantic.json_schema import models_json_schema

from eventbus.events import Command, Message
from eventbus.payloads import content_type_of

if TYPE_CHECKING:
    from eventbus.bus import EventBus

ASYNCAPI_VERSION = "3.0.0"
COMPONENT_SCHEMAS = "#/components/schemas/{model}"

# How each scheme's adapter carries a CloudEvent: binary mode with attribute headers of
# this prefix, or None for structured mode (the JSON envelope is the body).
_HEADER_PREFIX: dict[str, str | None] = {
    "kafka": "ce_",
    "amqp": "ce-",
    "amqps": "ce-",
    "nats": "ce-",
    "nats+core": "ce-",
    "redis+streams": "ce_",
    "rediss+streams": "ce_",
    "memory": "ce_",
    "redis": None,
    "rediss": None,
    "sqs": None,
}
_PROTOCOL = {"redis+streams": "redis", "rediss+streams": "rediss", "nats+core": "nats"}
_KAFKA, _AMQP, _NATS = "0.5.0", "0.3.0", "0.1.0"  # the bindings' versions used
_ID = re.compile(r"[^\w.\-]")


def asyncapi_document(
    bus: EventBus,
    *,
    title: str | None = None,
    version: str = "1.0.0",
    description: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``bus`` (see the module doc for what goes in).

    ``title`` defaults to the bus's ``source``; ``version`` is the service's API version
    (AsyncAPI's ``info.version``), not eventbus's.
    """
    url = urlsplit(bus.adapter.url)
    scheme = url.scheme
    prefix = _HEADER_PREFIX.get(scheme)
    settings = getattr(bus.adapter, "settings", None)
    # RabbitMQ's binding=amqp writes the AMQP binding's properties instead of ce-.
    if prefix == "ce-" and getattr(settings, "binding", "") == "amqp":
        prefix = "cloudEvents_"
    # ?mode=structured (Kafka, memory): one JSON document per message, no ce_ headers.
    if getattr(settings, "mode", "binary") == "structured":
        prefix = None
    subscribed = [(spec, _handled(bus, spec)) for spec in bus.subscriptions]
    classes = _unique([*(c for _, handled in subscribed for c in handled), *bus.published])

    schemas, payloads = _schemas(classes)
    messages = {
        _message_id(c): _message(
            c, payloads[c], prefix, scheme, content_type_of(c, bus.payload_format)
        )
        for c in classes
    }

    topics = _unique(
        [*(spec.topic for spec, _ in subscribed), *(c.default_topic() for c in bus.published)]
    )
    channel_ids = _ids(topics)
    channels: dict[str, Any] = {}
    for topic in topics:
        on_topic = [c for c in classes if c.default_topic() == topic] + [
            c for spec, handled in subscribed if spec.topic == topic for c in handled
        ]
        channel: dict[str, Any] = {
            "address": topic,
            "messages": {
                _message_id(c): {"$ref": f"#/components/messages/{_message_id(c)}"}
                for c in _unique(on_topic)
            },
        }
        bindings = _channel_bindings(scheme, topic, url.path)
        if bindings:
            channel["bindings"] = bindings
        channels[channel_ids[topic]] = channel

    operations: dict[str, Any] = {}
    for spec, handled in subscribed:
        cid = channel_ids[spec.topic]
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{cid}"},
            "summary": f"Group {spec.group!r} handles "
            + (", ".join(c.__name__ for c in handled) or "every message")
            + f" from {spec.topic!r}.",
            "messages": [{"$ref": f"#/channels/{cid}/messages/{_message_id(c)}"} for c in handled],
            "x-eventbus-group": spec.group,
            "x-eventbus-delivery": spec.guarantee,
            "x-eventbus-concurrency": spec.concurrency,
        }
        bindings = _receive_bindings(scheme, spec.group, spec.guarantee)
        if bindings:
            operation["bindings"] = bindings
        operations[_operation_id("receive", spec.group, cid, operations)] = operation
    for topic in _unique(c.default_topic() for c in bus.published):
        cid = channel_ids[topic]
        sent = [c for c in bus.published if c.default_topic() == topic]
        operations[_operation_id("send", None, cid, operations)] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{cid}"},
            "summary": f"Publishes {', '.join(c.__name__ for c in sent)} to {topic!r}.",
            "messages": [{"$ref": f"#/channels/{cid}/messages/{_message_id(c)}"} for c in sent],
        }

    info: dict[str, Any] = {"title": title or bus.source, "version": version}
    if description:
        info["description"] = description
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "defaultContentType": "application/json",
        "servers": {_ID.sub("_", scheme) or "broker": _server(url)},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }
    if schemas:
        document["components"]["schemas"] = schemas
    return document


def _handled(bus: EventBus, spec: Any) -> list[type[Message]]:
    """The classes a subscription handles: its handlers' classes; for a handler of every
    message on the topic, the registered classes whose topic it is."""
    handled = [h.message_class for h in spec.handlers.values() if h.message_class is not None]
    if spec.catch_all is not None:
        handled += [c for c in bus.registry.classes() if c.default_topic() == spec.topic]
    return _unique(handled)


def _schemas(classes: list[type[Message]]) -> tuple[dict[str, Any], dict[type[Message], Any]]:
    """pydantic's JSON schemas of ``classes``, every model (nested ones too) under
    ``components/schemas`` once (pydantic names clashing models apart)."""
    if not classes:
        return {}, {}
    refs, definitions = models_json_schema(
        [(c, "validation") for c in classes], ref_template=COMPONENT_SCHEMAS
    )
    payloads = {c: refs[(c, "validation")] for c in classes}
    return dict(definitions.get("$defs", {})), payloads


def _message(
    cls: type[Message], payload: dict[str, Any], prefix: str | None, scheme: str, content_type: str
) -> dict[str, Any]:
    version = cls.data_version()
    message: dict[str, Any] = {
        "name": cls.event_type(),
        "title": cls.__name__,
        "contentType": content_type,
        "payload": payload,
        "x-eventbus-type": cls.event_type(),
        "x-eventbus-version": version,
        "x-eventbus-kind": "command" if issubclass(cls, Command) else "event",
    }
    doc = (cls.__dict__.get("__doc__") or "").strip()  # its own, not a base class's
    if doc:
        message["summary"] = doc.splitlines()[0]
    headers = None
    if prefix is None:
        message["description"] = (
            "Carried in CloudEvents structured mode: the body is the CloudEvents JSON "
            "envelope (application/cloudevents+json) with this payload as its "
            + (
                "`data`, "
                if content_type == "application/json"
                else f"`data_base64` ({content_type}), "
            )
            + f'`type` {cls.event_type()!r} and `dataversion` "{version}".'
        )
    else:
        headers = _headers(cls, prefix)
        message["headers"] = headers
        message["correlationId"] = {"location": f"$message.header#/{prefix}correlationid"}
    examples = _examples(cls)
    if examples:
        message["examples"] = [
            {
                "name": f"{cls.__name__}-{i + 1}",
                "payload": example,
                **(
                    {
                        "headers": {
                            f"{prefix}type": cls.event_type(),
                            f"{prefix}dataversion": str(version),
                            f"{prefix}specversion": "1.0",
                        }
                    }
                    if headers
                    else {}
                ),
            }
            for i, example in enumerate(examples)
        ]
    bindings = _message_bindings(scheme, cls)
    if bindings:
        message["bindings"] = bindings
    return message


def _headers(cls: type[Message], prefix: str) -> dict[str, Any]:
    """The CloudEvents attributes a message of ``cls`` travels with, in binary mode."""
    text = {"type": "string"}
    properties = {
        f"{prefix}specversion": {"type": "string", "const": "1.0"},
        f"{prefix}id": {**text, "description": "The event id (deduplication key)."},
        f"{prefix}source": {**text, "description": "The publishing service (bus source)."},
        f"{prefix}type": {"type": "string", "const": cls.event_type()},
        f"{prefix}dataversion": {
            "type": "string",
            "const": str(cls.data_version()),
            "description": "The data version of the payload.",
        },
        f"{prefix}time": {"type": "string", "format": "date-time"},
        f"{prefix}correlationid": {**text, "description": "The flow this message is part of."},
        f"{prefix}causationid": {**text, "description": "The id of the message that caused it."},
        f"{prefix}partitionkey": {**text, "description": "Same key, same order."},
        f"{prefix}traceparent": {**text, "description": "W3C trace context."},
        f"{prefix}tracestate": text,
    }
    required = [f"{prefix}{name}" for name in ("specversion", "id", "source", "type")]
    return {"type": "object", "properties": properties, "required": required}


def _examples(cls: type[Message]) -> list[Any]:
    """The model's own examples, else one from every field's first example (when each
    required field has one)."""
    schema = cls.model_json_schema()
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return list(schema["examples"])
    example: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        key = field.alias or name
        if field.examples:
            example[key] = field.examples[0]
        elif field.is_required():
            return []
    return [example] if example else []


def _server(url: Any) -> dict[str, Any]:
    """Host and protocol of the bus's URL: no user, password or query (they may hold
    secrets, and a contract does not carry a service's tuning)."""
    host = url.netloc.rpartition("@")[2] or "localhost"
    server: dict[str, Any] = {"host": host, "protocol": _PROTOCOL.get(url.scheme, url.scheme)}
    if url.scheme != server["protocol"]:
        server["x-eventbus-scheme"] = url.scheme
    path = url.path.rstrip("/")
    if path:
        server["pathname"] = path
    return server


def _channel_bindings(scheme: str, topic: str, path: str) -> dict[str, Any]:
    if scheme == "kafka":
        return {"kafka": {"topic": topic, "bindingVersion": _KAFKA}}
    if scheme in ("amqp", "amqps"):
        vhost = unquote(path[1:]) if len(path) > 1 else "/"
        return {
            "amqp": {
                "is": "routingKey",
                "bindingVersion": _AMQP,
                "exchange": {
                    "name": topic,
                    "type": "topic",
                    "durable": True,
                    "autoDelete": False,
                    "vhost": vhost,
                },
            }
        }
    return {}


def _receive_bindings(scheme: str, group: str, guarantee: str) -> dict[str, Any]:
    if scheme == "kafka":
        return {"kafka": {"groupId": {"type": "string", "enum": [group]}, "bindingVersion": _KAFKA}}
    if scheme in ("amqp", "amqps"):
        return {"amqp": {"ack": guarantee == "at_least_once", "bindingVersion": _AMQP}}
    if scheme in ("nats", "nats+core"):
        return {"nats": {"queue": group, "bindingVersion": _NATS}}
    return {}


def _message_bindings(scheme: str, cls: type[Message]) -> dict[str, Any]:
    if scheme == "kafka":
        return {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "The partition key: "
                    "messages with the same key keep their order.",
                },
                "bindingVersion": _KAFKA,
            }
        }
    if scheme in ("amqp", "amqps"):
        return {"amqp": {"messageType": cls.event_type(), "bindingVersion": _AMQP}}
    return {}


def _message_id(cls: type[Message]) -> str:
    return _ID.sub("_", cls.event_type())


def _ids(topics: list[str]) -> dict[str, str]:
    """A component key (letters, digits, ``.``, ``-``, ``_``) per topic, distinct."""
    ids: dict[str, str] = {}
    for topic in topics:
        base = candidate = _ID.sub("_", topic) or "channel"
        n = 2
        while candidate in ids.values():
            candidate, n = f"{base}-{n}", n + 1
        ids[topic] = candidate
    return ids


def _operation_id(action: str, group: str | None, channel: str, taken: dict[str, Any]) -> str:
    base = ".".join(_ID.sub("_", p) for p in (action, group, channel) if p is not None)
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))
