"""``eventbus asyncapi``: every example service's AsyncAPI 3.0 document validates against
the official JSON schema (vendored in tests/asyncapi/), and says what the service does:
channels from topics, messages from the event classes (type, version, schema, examples),
operations from subscriptions and declared publishes, the server without credentials,
the broker's bindings."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from pydantic import BaseModel, ConfigDict, Field
from referencing import Registry
from referencing.jsonschema import DRAFT7

from eventbus import Command, Context, Event, EventBus
from eventbus.asyncapi import asyncapi_document

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "tests" / "asyncapi" / "asyncapi-3.0.0.schema.json"


@cache
def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    # The bundle keeps each definition under its $id: resolve those locally, never online.
    registry: Registry[Any] = Registry().with_resources(
        (uri, DRAFT7.create_resource(part)) for uri, part in schema["definitions"].items()
    )
    return Draft7Validator(schema, registry=registry)


def assert_valid(document: dict[str, Any]) -> None:
    errors = sorted(validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:10]
    )


def example_services() -> list[str]:
    """``module:attribute`` of every service in examples/: a module-level EventBus, or a
    module-level function taking no argument and annotated to return one. Found by
    reading the code (importing every example into one process would make their event
    types clash)."""
    found = []
    for path in sorted((ROOT / "examples").rglob("*.py")):
        if path.name.startswith("test_"):
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.FunctionDef)
                and _returns_bus(node)
                and len(node.args.defaults) == len(node.args.args)
                and None not in node.args.kw_defaults
            ):
                found.append(f"{module}:{node.name}")
            elif (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and "EventBus" in ast.unparse(node.value.func)
            ):
                found += [f"{module}:{t.id}" for t in node.targets if isinstance(t, ast.Name)]
    return found


def _returns_bus(node: ast.FunctionDef) -> bool:
    return node.returns is not None and ast.unparse(node.returns) in ("EventBus", "'EventBus'")


def run_cli(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    if url is not None:
        env["EVENTBUS_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "eventbus", "asyncapi", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_example_services_are_found() -> None:
    services = example_services()
    for expected in (
        "examples.order_saga.order_service:create_bus",
        "examples.order_saga.payment_service:create_bus",
        "examples.order_saga.inventory_service:create_bus",
        "examples.testing.shop:bus",
        "examples.cqrs_shop.app:create_bus",
    ):
        assert expected in services, services


@pytest.mark.parametrize("service", example_services())
def test_every_example_service_document_validates(service: str) -> None:
    ran = run_cli(
        service,
        "--format",
        "json",
        url="kafka://user:s3cret@broker:9092?security_protocol=SASL_SSL&sasl_mechanism=PLAIN",
    )
    assert ran.returncode == 0, ran.stderr
    document = json.loads(ran.stdout)
    assert_valid(document)
    assert document["operations"], "a service with no operation documents nothing"
    assert "s3cret" not in ran.stdout


def test_yaml_is_the_same_document() -> None:
    service = "examples.order_saga.payment_service:create_bus"
    as_json = json.loads(run_cli(service, "--format", "json").stdout)
    ran = run_cli(service)  # yaml by default
    assert ran.returncode == 0, ran.stderr
    assert yaml.safe_load(ran.stdout) == as_json


def test_a_bad_format_or_target_is_one_line() -> None:
    ran = run_cli("examples.testing.shop:bus", "--format", "xml")
    assert ran.returncode == 2 and "error: --format 'xml'" in ran.stderr, ran.stderr
    ran = run_cli("examples.testing.shop:nothing")
    assert ran.returncode == 6 and ran.stderr.startswith("error: "), ran.stderr


# -- what the document says, on a service of the test's own ------------------------------


class Line(BaseModel):
    sku: str
    count: int


class ItemsReserved(
    Event, type="test.asyncapi.items-reserved", topic="test-asyncapi-stock", version=2
):
    """Every line of an order is reserved."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"order_id": "o-1", "lines": [{"sku": "A-1", "count": 2}]}]}
    )
    order_id: str = Field(description="The order the items are for")
    lines: list[Line]


class ReserveItems(Command, type="test.asyncapi.reserve-items", topic="test-asyncapi-commands"):
    order_id: str = Field(examples=["o-1"])


class StockLow(Event, type="test.asyncapi.stock-low", topic="test-asyncapi-alerts"):
    sku: str


def stock_service(url: str) -> EventBus:
    bus = EventBus(url, source="stock-service")

    @bus.publishes(ItemsReserved, StockLow)
    @bus.subscribe(ReserveItems)
    async def reserve(command: ReserveItems, ctx: Context) -> None:
        await ctx.publish(ItemsReserved(order_id=command.order_id, lines=[]))

    @bus.subscribe(ItemsReserved, group="audit", concurrency=4)
    async def audit(event: ItemsReserved) -> None:
        pass

    return bus


URLS = {
    "memory": "memory://stock",
    "kafka": "kafka://user:s3cret@broker-1:9092,broker-2:9092"
    "?security_protocol=SASL_SSL&sasl_mechanism=PLAIN",
    "amqp": "amqp://user:s3cret@rabbit:5672/shop",
    "nats": "nats://user:s3cret@nats:4222",
    "redis": "redis+streams://:s3cret@redis:6379/0",
    "sqs": "sqs://localhost:4566?region=eu-west-1&prefix=s3cret",
}


@pytest.mark.parametrize("broker", sorted(URLS))
def test_the_document_validates_on_every_broker_without_its_credentials(broker: str) -> None:
    document = asyncapi_document(stock_service(URLS[broker]))
    assert_valid(document)
    assert "s3cret" not in json.dumps(document)
    (server,) = document["servers"].values()
    assert "@" not in server["host"] and "?" not in server["host"]


def test_channels_messages_and_operations() -> None:
    document = asyncapi_document(stock_service(URLS["kafka"]), version="2.3.0")
    assert document["asyncapi"] == "3.0.0"
    assert document["info"] == {"title": "stock-service", "version": "2.3.0"}
    assert document["servers"]["kafka"] == {
        "host": "broker-1:9092,broker-2:9092",
        "protocol": "kafka",
    }
    channels = document["channels"]
    assert {c["address"] for c in channels.values()} == {
        "test-asyncapi-stock",
        "test-asyncapi-commands",
        "test-asyncapi-alerts",
    }

    message = document["components"]["messages"]["test.asyncapi.items-reserved"]
    assert message["name"] == "test.asyncapi.items-reserved"
    assert message["title"] == "ItemsReserved"
    assert message["summary"] == "Every line of an order is reserved."
    assert message["x-eventbus-version"] == 2
    assert message["headers"]["properties"]["ce_type"]["const"] == "test.asyncapi.items-reserved"
    assert message["headers"]["properties"]["ce_dataversion"]["const"] == "2"
    assert message["examples"][0]["payload"] == {
        "order_id": "o-1",
        "lines": [{"sku": "A-1", "count": 2}],
    }
    payload = resolve(document, message["payload"])
    assert payload["required"] == ["order_id", "lines"]
    assert resolve(document, payload["properties"]["lines"]["items"])["properties"]["sku"]
    command = document["components"]["messages"]["test.asyncapi.reserve-items"]
    assert command["examples"][0]["payload"] == {"order_id": "o-1"}  # from field examples
    assert command["x-eventbus-kind"] == "command"

    operations = document["operations"]
    receive = operations["receive.audit.test-asyncapi-stock"]
    assert receive["action"] == "receive"
    assert resolve(document, receive["channel"])["address"] == "test-asyncapi-stock"
    assert receive["bindings"]["kafka"]["groupId"] == {"type": "string", "enum": ["audit"]}
    assert [resolve(document, m)["name"] for m in receive["messages"]] == [
        "test.asyncapi.items-reserved"
    ]
    sends = {
        resolve(document, op["channel"])["address"]
        for op in operations.values()
        if op["action"] == "send"
    }
    assert sends == {"test-asyncapi-stock", "test-asyncapi-alerts"}


def test_amqp_and_nats_bindings() -> None:
    amqp = asyncapi_document(stock_service(URLS["amqp"]))
    channel = next(c for c in amqp["channels"].values() if c["address"] == "test-asyncapi-stock")
    assert channel["bindings"]["amqp"]["exchange"] == {
        "name": "test-asyncapi-stock",
        "type": "topic",
        "durable": True,
        "autoDelete": False,
        "vhost": "shop",
    }
    nats = asyncapi_document(stock_service(URLS["nats"]))
    assert (
        nats["operations"]["receive.audit.test-asyncapi-stock"]["bindings"]["nats"]["queue"]
        == "audit"
    )


def test_amqp_binding_headers_follow_the_rabbitmq_binding_option() -> None:
    """``binding=amqp`` publishes ``cloudEvents_`` headers: the document says so."""
    for url, prefix in ((URLS["amqp"], "ce-"), (URLS["amqp"] + "?binding=amqp", "cloudEvents_")):
        document = asyncapi_document(stock_service(url))
        assert_valid(document)
        message = document["components"]["messages"]["test.asyncapi.items-reserved"]
        headers = message["headers"]["properties"]
        assert headers[prefix + "type"]["const"] == "test.asyncapi.items-reserved", headers


def resolve(document: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/a/b``) in ``document``."""
    if "$ref" not in ref:
        return ref
    node: Any = document
    for part in ref["$ref"].removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return resolve(document, node)


@pytest.mark.parametrize(
    "url", [URLS["kafka"] + "&mode=structured", "memory://stock?mode=structured"]
)
def test_structured_mode_is_documented_as_one_json_document_without_headers(url: str) -> None:
    """``mode=structured`` sends no ``ce_`` headers: the document must not promise any."""
    document = asyncapi_document(stock_service(url))
    assert_valid(document)
    message = document["components"]["messages"]["test.asyncapi.items-reserved"]
    assert "headers" not in message, message["headers"]
    assert "application/cloudevents+json" in message["description"]
    assert all("headers" not in example for example in message["examples"])
