"""The conformance suite: one set of cases every adapter must pass.

Subclass :class:`ConformanceSuite` in a test module and provide a ``target``
fixture returning a :class:`~eventbus.testing.BrokerTarget`::

    import pytest
    from eventbus.testing import BrokerTarget, ConformanceSuite

    @pytest.fixture
    def target() -> BrokerTarget:
        return BrokerTarget(name="mybroker", url="mybroker://localhost:1234")

    class TestMyBroker(ConformanceSuite):
        pass

Each case is gated by typed requirements (``@case(requires(Capability.redelivery,
"why"))``) over the adapter's :class:`~eventbus.adapter.Capabilities` and the
target's fault hooks, and skipped, saying why, when the broker lacks what it needs; cases named in
``target.limits`` are skipped with the reason given there.
"""

from __future__ import annotations

from typing import Any

import pytest

from eventbus._deprecation import Renamed, renamed
from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping, Pong, on_topic
from eventbus.testing.conformance._support import (
    Capability,
    Case,
    Need,
    Recorder,
    Requirement,
    case,
    requires,
)
from eventbus.testing.conformance.basics import BasicsCases
from eventbus.testing.conformance.batches import BatchCases
from eventbus.testing.conformance.cloudevents import CloudEventsCases
from eventbus.testing.conformance.contract import ContractCases
from eventbus.testing.conformance.deadletters import DeadLetterCases
from eventbus.testing.conformance.dedupe import DedupeCases
from eventbus.testing.conformance.failures import FailureCases
from eventbus.testing.conformance.foreign import ForeignCases
from eventbus.testing.conformance.groups import GroupCases
from eventbus.testing.conformance.guarantees import GuaranteeCases
from eventbus.testing.conformance.lifecycle import LifecycleCases
from eventbus.testing.conformance.ordering import OrderingCases
from eventbus.testing.conformance.requests import RequestCases
from eventbus.testing.conformance.resilience import ResilienceCases
from eventbus.testing.conformance.restart import RestartCases


@pytest.mark.conformance
class ConformanceSuite(
    BasicsCases,
    CloudEventsCases,
    GroupCases,
    BatchCases,
    OrderingCases,
    FailureCases,
    GuaranteeCases,
    LifecycleCases,
    RestartCases,
    DedupeCases,
    RequestCases,
    ContractCases,
    DeadLetterCases,
    ForeignCases,
    ResilienceCases,
):
    """Every conformance case; subclass it (as ``Test...``) next to a ``target`` fixture."""


_RENAMED: Renamed = {
    "Inbox": (
        "eventbus.testing.Collector (the test helper; eventbus.patterns.Inbox is "
        "the transactional inbox)",
        lambda: Collector,
    )
}


def __getattr__(name: str) -> Any:
    return renamed(__name__, name, _RENAMED)


__all__ = [
    "BasicsCases",
    "BatchCases",
    "Capability",
    "Case",
    "CloudEventsCases",
    "Collector",
    "ConformanceSuite",
    "ContractCases",
    "DeadLetterCases",
    "DedupeCases",
    "FailureCases",
    "GroupCases",
    "GuaranteeCases",
    "LifecycleCases",
    "Need",
    "OrderingCases",
    "Ping",
    "Pong",
    "Recorder",
    "RequestCases",
    "Requirement",
    "ResilienceCases",
    "RestartCases",
    "case",
    "on_topic",
    "requires",
]
