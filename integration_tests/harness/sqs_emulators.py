"""SQS emulators besides moto, run by the harness as local processes (#25).

- **ElasticMQ** (``org.elasticmq:elasticmq-server_2.13``, from Maven Central, run on
  the JDK): SQS only, no SNS, so the adapter's ``topology=queue``. Its queues are
  kept in a file of the process's workdir (``queues-storage``), so ``restart()``
  brings them back; its messages are kept in memory (see ``_ELASTICMQ_CONF``).
- **goaws** (``github.com/Admiral-Piett/goaws``), built with the machine's Go from
  the Go module proxy: SQS and SNS, in memory.

Nothing lives in the repository: ElasticMQ's jars and the goaws binary are cached
outside it (``$EVENTBUS_SQS_EMULATORS_CACHE``, by default
``~/.cache/eventbus/<emulator>/<version>``), fetched once under a file lock as
Kafka's jars are (:func:`.kafka_dist.fetch_maven_runtime`); ``.ci/start-brokers``
fetches both ahead of the tests (``python integration_tests/harness/sqs_emulators.py``,
which needs nothing but Python, ``mvn`` and ``go``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if __package__:
    from .kafka_dist import _locked, fetch_maven_runtime, java_binary
else:  # loaded by its path, as .ci/start-brokers does before eventbus is installed
    from kafka_dist import _locked, fetch_maven_runtime, java_binary

if TYPE_CHECKING:
    from .processes import LocalProcess

ELASTICMQ_VERSION = os.environ.get("EVENTBUS_ELASTICMQ_VERSION", "1.6.11")
GOAWS_VERSION = os.environ.get("EVENTBUS_GOAWS_VERSION", "v0.4.5")
GOAWS_MODULE = "github.com/Admiral-Piett/goaws"
BUILD_TIMEOUT = 600.0
# The region and account every emulator here answers for (AWS's example account).
REGION = "us-east-1"
ACCOUNT = "100010001000"

_ELASTICMQ_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>eventbus.test</groupId>
  <artifactId>elasticmq-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.elasticmq</groupId>
      <artifactId>elasticmq-server_2.13</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""

# strict limits: ElasticMQ refuses what SQS refuses (sizes, batch sizes, names).
# Queues (their attributes) are kept on disk, so a restart keeps them. Messages are
# kept in memory: ElasticMQ 1.6.11's SQL message storage (messages-storage, H2)
# races with a receive of the message it is writing. Its writer then fails
# (IllegalArgumentException from DBMessage.from: a null string in a list it writes
# as JSON, in ElasticMQ's log), the SendMessage gets no reply for 21 s, then HTTP 503, and the SDK
# sends the message again: a second copy of a message sent once. Seen in 7 of 305
# runs of eight topics at once on a loaded machine (0 of 160 with it off), and once
# in a full CI run.
_ELASTICMQ_CONF = """include classpath("application.conf")
node-address {{ protocol = http, host = 127.0.0.1, port = {port}, context-path = "" }}
rest-sqs {{ enabled = true, bind-port = {port}, bind-hostname = "127.0.0.1", sqs-limits = strict }}
rest-stats {{ enabled = false }}
generate-node-address = false
aws {{ region = "{region}", accountId = "{account}" }}
queues-storage {{ enabled = true, path = "{workdir}/queues.conf" }}
messages-storage {{ enabled = false }}
"""

# One environment, no predefined queues or topics.
_GOAWS_CONF = """Local:
  Host: 127.0.0.1
  Port: {port}
  Region: {region}
  AccountId: "{account}"
  LogToFile: false
  EnableDuplicates: false
  QueueAttributeDefaults:
    VisibilityTimeout: 30
    ReceiveMessageWaitTimeSeconds: 0
    MaximumMessageSize: 262144
  RandomLatency:
    Min: 0
    Max: 0
"""


class EmulatorFetchError(RuntimeError):
    """An emulator could not be fetched or built; the message says which tool and how."""


def cache_dir(name: str, version: str) -> Path:
    base = os.environ.get("EVENTBUS_SQS_EMULATORS_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "eventbus"
    return root / name / version


def ensure_elasticmq() -> Path:
    """The directory holding ElasticMQ's runtime classpath, fetched on first use."""
    return fetch_maven_runtime(
        cache_dir("elasticmq", ELASTICMQ_VERSION),
        _ELASTICMQ_POM.format(version=ELASTICMQ_VERSION),
        "elasticmq-server_2.13-*.jar",
        f"org.elasticmq:elasticmq-server_2.13:{ELASTICMQ_VERSION}",
    )


def _go_binary() -> str:
    for candidate in (shutil.which("go"), "/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EmulatorFetchError(
        f"goaws {GOAWS_VERSION} is not built yet and there is no `go` toolchain to build "
        "it (Debian: apt-get install golang-go), or put a goaws binary at "
        f"{cache_dir('goaws', GOAWS_VERSION) / 'bin' / 'goaws'}"
    )


def ensure_goaws() -> Path:
    """The goaws binary, built with ``go install`` on first use."""
    target = cache_dir("goaws", GOAWS_VERSION)
    binary = target / "bin" / "goaws"
    if os.access(binary, os.X_OK):
        return binary
    go = _go_binary()
    with _locked(target.parent / f"{GOAWS_VERSION}.lock"):
        if os.access(binary, os.X_OK):  # another session built it while we waited
            return binary
        build = target / "build"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        env = {**os.environ, "GOBIN": str(build), "CGO_ENABLED": "0"}
        argv = [go, "install", f"{GOAWS_MODULE}/app/cmd@{GOAWS_VERSION}"]
        try:
            done = subprocess.run(
                argv, cwd=build, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            raise EmulatorFetchError(
                f"building {GOAWS_MODULE} {GOAWS_VERSION} took over {BUILD_TIMEOUT:.0f}s; "
                "is the Go module proxy reachable?"
            ) from exc
        if done.returncode != 0 or not (build / "cmd").exists():
            tail = (done.stdout + done.stderr).strip()[-2000:]
            raise EmulatorFetchError(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{tail}")
        binary.parent.mkdir(parents=True, exist_ok=True)
        os.replace(build / "cmd", binary)
        shutil.rmtree(build, ignore_errors=True)
    return binary


def _start(name: str, config_name: str, config: str, argv: list[str]) -> LocalProcess:
    """Run ``argv`` on a free port with ``config`` written to ``config_name`` in its
    workdir (``{port}`` and ``{workdir}`` filled in, ``{config}`` in ``argv`` too)."""
    from .processes import LocalProcess, free_port

    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"eventbus-{name}-"))
    path = workdir / config_name
    path.write_text(config.format(port=port, region=REGION, account=ACCOUNT, workdir=workdir))
    url = f"sqs://127.0.0.1:{port}?region={REGION}"
    argv = [arg.format(config=path) for arg in argv]
    proc = LocalProcess(name, argv, url, workdir=workdir, ready_timeout=60.0)
    proc.start()
    return proc


def start_elasticmq() -> LocalProcess:
    """ElasticMQ on a free port (SQS only; queues kept on disk, messages in memory)."""
    lib = ensure_elasticmq()
    jvm = [java_binary(), "-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
    main = ["-Dconfig.file={config}", "-cp", f"{lib}/*", "org.elasticmq.server.Main"]
    return _start("elasticmq", "elasticmq.conf", _ELASTICMQ_CONF, [*jvm, *main])


def start_goaws() -> LocalProcess:
    """goaws on a free port (SQS and SNS; queues and topics in memory)."""
    binary = ensure_goaws()
    return _start("goaws", "goaws.yaml", _GOAWS_CONF, [str(binary), "-config", "{config}", "Local"])


def main() -> int:
    """Fetch ElasticMQ's jars and build goaws (``.ci/start-brokers`` runs this)."""
    status = 0
    for name, ensure in (("elasticmq", ensure_elasticmq), ("goaws", ensure_goaws)):
        try:
            print(f"{name}: {ensure()}")
        except Exception as exc:  # each is reported; the caller decides
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
