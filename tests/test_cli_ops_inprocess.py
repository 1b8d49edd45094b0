"""The ops commands' paths in this process (the subprocess tests are not measured):
`asyncapi` to stdout and to a file, a worker's link to its supervisor, the probes around
`serve`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from eventbus import EventBus
from eventbus._asyncapi_html import render_html
from eventbus.asyncapi import asyncapi_document
from eventbus.cli import app
from eventbus.cli.serving import ServeOptions, serve_with_probes
from tests.bus_support import memory_url, run
from tests.test_cli_ops import free_port, until_answer

runner = CliRunner()


def test_asyncapi_writes_yaml_or_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTBUS_URL", raising=False)
    service = "examples.order_saga.payment_service:create_bus"
    printed = runner.invoke(
        app, ["asyncapi", service, "--title", "Payments", "--app-version", "2.0.0"]
    )
    assert printed.exit_code == 0, printed.output
    document = yaml.safe_load(printed.stdout)
    assert document["info"]["title"] == "Payments" and document["info"]["version"] == "2.0.0"
    assert document["info"]["description"].startswith("Payment service")
    target = tmp_path / "payments.json"
    written = runner.invoke(app, ["asyncapi", service, "-f", "JSON", "-o", str(target)])
    assert written.exit_code == 0, written.output
    assert json.loads(target.read_text())["info"]["title"] == "payment-service"
    refused = runner.invoke(app, ["asyncapi", service, "--format", "toml"])
    assert refused.exit_code == 2 and "--format 'toml' is not one of yaml, json" in refused.output


def test_a_worker_reports_its_port_and_stops_when_the_supervisor_is_gone() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        ours, theirs = socket.socketpair()
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stopped.set)  # what bus.run() would do
        try:

            async def serve(served: EventBus) -> int:
                port = int((await loop.sock_recv(ours, 64)).strip())
                async with httpx.AsyncClient() as http:
                    assert (await http.get(f"http://127.0.0.1:{port}/livez")).status_code == 200
                ours.close()  # the supervisor is gone
                await asyncio.wait_for(stopped.wait(), 5)
                return 0

            options = ServeOptions(health_port=0, host="127.0.0.1", supervisor_fd=theirs.detach())
            assert await serve_with_probes(bus, options, serve) == 0
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    run(scenario)


def test_asyncapi_docs_port_serves_the_page_and_the_document() -> None:
    port = free_port()
    docs = _docs_process(port)
    try:
        page = until_answer(port, "/")
        assert page.headers["content-type"].startswith("text/html")
        assert "PaymentCharged" in page.text and "<script" not in page.text
        document = until_answer(port, "/asyncapi.json").json()
        assert document["asyncapi"] == "3.0.0"
        assert yaml.safe_load(until_answer(port, "/asyncapi.yaml").text) == document
    finally:
        docs.send_signal(signal.SIGINT)
        assert docs.wait(20) == 0


def _docs_process(port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventbus",
            "asyncapi",
            "examples.order_saga.payment_service:create_bus",
            "--docs-port",
            str(port),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stderr=subprocess.DEVNULL,
    )


def test_the_page_renders_every_operation_and_message() -> None:
    from examples.fastapi_orders.app import bus

    document = asyncapi_document(bus)
    page = render_html(document)
    for operation in document["operations"]:
        assert f'id="{operation}"' in page
    assert "OrderSubmitted" in page and "&quot;order_id&quot;" in page


def test_the_docs_server_in_process_stops_on_ctrl_c() -> None:
    from eventbus.cli.asyncapi import _serve_docs
    from examples.fastapi_orders.app import bus

    document = asyncapi_document(bus)
    port = free_port()

    async def scenario() -> None:
        serving = asyncio.create_task(
            _serve_docs(document, json.dumps(document), None, "127.0.0.1", port)
        )
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    page = await http.get(f"http://127.0.0.1:{port}/")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            assert "OrderSubmitted" in page.text
            assert (await http.get(f"http://127.0.0.1:{port}/asyncapi.yaml")).status_code == 404
        os.kill(os.getpid(), signal.SIGINT)  # the page's own handler takes it
        await asyncio.wait_for(serving, 5)

    run(scenario)
