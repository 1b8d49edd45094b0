"""Apache Kafka from Maven Central, run on the machine's JDK in KRaft mode.

No jars live in the repository: the first call resolves
``org.apache.kafka:kafka_2.13`` and its runtime dependencies with the machine's
Maven into a cache directory outside the repo (``$EVENTBUS_KAFKA_CACHE``, by
default ``~/.cache/eventbus/kafka/<version>``); later calls reuse it. A file
lock makes concurrent test sessions share one download.

:func:`broker_process` formats a KRaft storage directory once and returns a
:class:`~integration_tests.harness.processes.LocalProcess` running one node as
broker and controller, with settings fit for tests. Its data directory is
durable, so ``restart()`` brings the same topics, records and committed
offsets back.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

KAFKA_VERSION = os.environ.get("EVENTBUS_KAFKA_VERSION", "4.1.1")
# Kafka's own scripts pick the slf4j 1.x binding of log4j2; so do we.
LOG4J_VERSION = "2.24.3"
MAVEN_TIMEOUT = 600.0

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>eventbus.test</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

# Console logging (captured into the process log by LocalProcess), quiet enough
# that the tail shown on a failed start-up is the part that matters.
_LOG4J2 = """status = error
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = WARN
logger.log.name = org.apache.kafka.storage.internals.log
logger.log.level = WARN
"""


class KafkaDistributionError(RuntimeError):
    """Java, Maven or the Kafka jars could not be had; the message says which and how."""


def cache_dir() -> Path:
    base = os.environ.get("EVENTBUS_KAFKA_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "eventbus" / "kafka"
    return root / KAFKA_VERSION


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaDistributionError(
            "no `java` on PATH (and JAVA_HOME unset): Apache Kafka needs a JDK 17+ "
            "(Debian: apt-get install openjdk-17-jre-headless)"
        )
    return found


def fetch_maven_runtime(target: Path, pom: str, expect: str, what: str) -> Path:
    """``target/lib``: the runtime classpath of ``pom``'s dependencies, fetched with the
    machine's Maven on first use (under a file lock beside ``target``, so concurrent
    sessions share one download). ``expect`` is a glob of a jar that must be there;
    ``what`` names the artifact in errors. Also used for ElasticMQ (sqs_emulators.py)."""
    lib = target / "lib"
    marker = target / "complete"
    if marker.exists():
        return lib
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaDistributionError(
            f"{what} is not cached in {target} and there is no `mvn` to fetch it "
            "(Debian: apt-get install maven), or put its runtime jars in "
            f"{lib} and create {marker}"
        )
    with _locked(target.parent / f"{target.name}.lock"):
        if marker.exists():  # another session fetched it while we waited
            return lib
        target.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(lib, ignore_errors=True)
        (target / "pom.xml").write_text(pom)
        argv = [
            mvn,
            "-q",
            "-B",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ]
        try:
            done = subprocess.run(
                argv, cwd=target, capture_output=True, text=True, timeout=MAVEN_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaDistributionError(
                f"fetching {what} with Maven took over {MAVEN_TIMEOUT:.0f}s; "
                "is Maven Central reachable?"
            ) from exc
        if done.returncode != 0 or not any(lib.glob(expect)):
            tail = (done.stdout + done.stderr).strip()[-2000:]
            raise KafkaDistributionError(
                f"Maven could not fetch {what} into {lib} (exit {done.returncode}):\n{tail}"
            )
        marker.write_text(target.name + "\n")
    return lib


def ensure_jars() -> Path:
    """The directory holding Kafka's runtime classpath, downloading it on first use.

    Without ``mvn``, point ``EVENTBUS_KAFKA_CACHE`` at a directory holding
    ``<version>/lib/*.jar`` (and a ``<version>/complete`` marker)."""
    return fetch_maven_runtime(
        cache_dir(),
        _POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION),
        "kafka_2.13-*.jar",
        f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
    )


def _cluster_id() -> str:
    # Kafka's own format: a random UUID, base64url without padding. One starting
    # with "-" would be read by the storage tool's argument parser as an option.
    while True:
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster.startswith("-"):
            return cluster


def server_properties(*, data: Path, port: int, controller_port: int, advertised_port: int) -> str:
    """A single-node broker+controller for tests: replication 1, no join delay, small
    segments, and short minimum session timeouts so tests may ask for fast groups."""
    return f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{advertised_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=2
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=500
log.segment.bytes=1048576
log.retention.check.interval.ms=60000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.flush.interval.messages=9223372036854775807
"""


def prepare(workdir: Path, *, port: int, controller_port: int, advertised_port: int) -> list[str]:
    """Write the config into ``workdir``, format its storage once, return the argv."""
    lib = ensure_jars()
    java = java_binary()
    config = workdir / "server.properties"
    config.write_text(
        server_properties(
            data=workdir / "data",
            port=port,
            controller_port=controller_port,
            advertised_port=advertised_port,
        )
    )
    log_config = workdir / "log4j2.properties"
    log_config.write_text(_LOG4J2)
    classpath = f"{lib}/*"
    jvm = [
        java,
        "-Xms256m",
        "-Xmx1g",
        "-XX:+UseSerialGC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_config}",
        "-cp",
        classpath,
    ]
    formatted = subprocess.run(
        [*jvm, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if formatted.returncode != 0:
        raise KafkaDistributionError(
            "formatting the KRaft storage failed "
            f"(exit {formatted.returncode}):\n{(formatted.stdout + formatted.stderr)[-2000:]}"
        )
    return [*jvm, "kafka.Kafka", str(config)]


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="eventbus-apache-kafka-"))
