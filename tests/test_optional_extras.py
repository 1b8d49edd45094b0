"""The library, its probes and its AsyncAPI generator import without the optional extras
(prometheus-client, OpenTelemetry, FastAPI, PyYAML, watchfiles, msgspec, fastavro,
protobuf); what needs one names it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = (
    *("prometheus_client", "opentelemetry", "fastapi", "starlette", "yaml", "watchfiles"),
    *("msgspec", "fastavro", "google"),
)


def without_extras(tmp_path: Path) -> dict[str, str]:
    hide = tmp_path / "hide"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        f"for name in {HIDDEN!r}:\n"
        "    sys.modules[name] = None  # import raises ModuleNotFoundError\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    environ["PYTHONPATH"] = os.pathsep.join([str(hide), str(ROOT)])
    return environ


def python(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=without_extras(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_core_probes_and_asyncapi_import_without_the_extras(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import importlib.util
        assert importlib.util.find_spec("prometheus_client") is None, "not hidden"
        import eventbus, eventbus.probes, eventbus.asyncapi, eventbus.cli, eventbus.testing
        try:
            import eventbus.fastapi
        except ModuleNotFoundError as missing:
            print(missing)
    """)
    ran = python(tmp_path, "-c", code)
    assert ran.returncode == 0, ran.stderr
    assert 'pip install "eventbus[fastapi]"' in ran.stdout


def test_commands_needing_an_extra_name_it(tmp_path: Path) -> None:
    ran = python(tmp_path, "-m", "eventbus", "asyncapi", "examples.testing.shop:bus")
    assert ran.returncode == 3 and 'pip install "eventbus[asyncapi]"' in ran.stderr, ran.stderr
    ran = python(
        tmp_path, "-m", "eventbus", "asyncapi", "examples.testing.shop:bus", "--format", "json"
    )
    assert ran.returncode == 0 and '"asyncapi": "3.0.0"' in ran.stdout, ran.stderr
    ran = python(tmp_path, "-m", "eventbus", "run", "examples.testing.shop:bus", "--reload")
    assert ran.returncode == 3 and 'pip install "eventbus[reload]"' in ran.stderr, ran.stderr
    ran = python(
        tmp_path, "-m", "eventbus", "run", "examples.testing.shop:bus", "--metrics-port", "0"
    )
    assert ran.returncode == 3 and 'pip install "eventbus[prometheus]"' in ran.stderr, ran.stderr


def test_payload_formats_need_their_extra_only_when_used(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        from eventbus import Envelope, Event, EventBus, registry
        from eventbus.errors import ConfigurationError, SchemaError

        class Tally(Event, type="tally", payload_format="msgpack"):
            n: int

        class Count(Event, type="count", payload_format="avro"):
            n: int

        for message in (Tally(n=1), Count(n=1)):
            try:
                EventBus("memory://").envelope_for(message)
            except ConfigurationError as exc:
                print(exc)
        avro = Envelope.create(type="count", source="t", datacontenttype="application/avro")
        try:
            registry.decode(avro)
        except SchemaError as exc:
            print(exc)
        from eventbus.payloads.protobuf import ProtobufFormat
        try:
            ProtobufFormat(Count)
        except ConfigurationError as exc:
            print(exc)
    """)
    ran = python(tmp_path, "-c", code)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert len(lines) == 4, ran.stdout
    for line, extra in zip(lines, ("msgpack", "avro", "avro", "protobuf"), strict=True):
        assert f'pip install "eventbus[{extra}]"' in line, line
