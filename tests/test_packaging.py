"""What the six distributions promise a user once installed: their types, one version, and
a library that installs and imports without the command line's dependencies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ("kafka", "nats", "rabbitmq", "redis", "sqs")
# Distribution -> its project folder and import package.
DISTRIBUTIONS = {"eventbus": (ROOT, "eventbus")} | {
    f"eventbus-{broker}": (ROOT / "adapters" / broker, f"eventbus_{broker}")
    for broker in ADAPTERS
}


def test_every_package_is_typed_for_a_user_type_checking_from_outside_the_checkout(
    tmp_path: Path,
) -> None:
    """Without ``py.typed`` mypy skips an installed package and every name is ``Any``."""
    for folder, package in DISTRIBUTIONS.values():
        assert (folder / package / "py.typed").is_file(), f"{package} has no py.typed"
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        from eventbus import EventBus
        from eventbus_kafka import KafkaAdapter
        from eventbus_nats import NatsAdapter
        from eventbus_rabbitmq import RabbitMQAdapter
        from eventbus_redis import RedisStreamsAdapter
        from eventbus_sqs import SqsAdapter

        reveal_type(EventBus)
        reveal_type(KafkaAdapter)
        reveal_type(NatsAdapter)
        reveal_type(RabbitMQAdapter)
        reveal_type(RedisStreamsAdapter)
        reveal_type(SqsAdapter)
    """))
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "app.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    revealed = [line for line in checked.stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == 6 and not any('"Any"' in line for line in revealed), checked.stdout
