"""Testing kit: the conformance suite and what it runs against.

::

    from eventbus.testing import BrokerTarget, ConformanceSuite
"""

from eventbus.testing.conformance import ConformanceSuite, Inbox, on_topic
from eventbus.testing.target import BrokerTarget, FaultInjector

__all__ = ["BrokerTarget", "ConformanceSuite", "FaultInjector", "Inbox", "on_topic"]
