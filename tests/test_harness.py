"""The integration tests' broker harness (integration_tests/harness/), in what runs
without a broker: its KRaft cluster ids never look like a command-line option."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "integration_tests" / "harness" / "kafka_dist.py"


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("kafka_dist_under_test", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # 0xf8... encodes to "-..." in base64url: the storage tool took it for an option.
    draws = iter([uuid.UUID(bytes=b"\xf8" + b"\x00" * 15), uuid.UUID(int=1)])
    monkeypatch.setattr(module.uuid, "uuid4", lambda: next(draws))
    cluster = module._cluster_id()
    assert not cluster.startswith("-") and len(cluster) == 22
