"""Messages an adapter fetched ahead and gave back unread, counted per message.

A broker's delivery count (SQS's ``ApproximateReceiveCount``, a quorum queue's
``x-delivery-count``, JetStream's ``num_delivered``, a Redis stream entry's delivery
counter) grows each time a consumer fetches a message, whether or not a handler then
ran. An adapter that fetches ahead of its consumer and is closed with some of that
still unread gives it back unrun. The bus's crash-loop budget (``eventbus.runs``)
takes every delivery it did not see for a run of the handler, so after a few such
closes a message no handler ever started would be dead-lettered as a crash loop.

So an adapter records each message it gives back unread (:meth:`GivenBack.add`) and
takes those away from the broker's count when it builds ``Delivery.attempt``
(:meth:`GivenBack.of`). The record is process-wide, keyed by a scope the adapter
chooses (the queue, stream or durable consumer the count belongs to, with its
broker), so an adapter made anew in the same process (a bus restarted, several buses
of one service stopping at once) still knows. Another process does not: there a
give-back still counts as a run, erring toward stopping a real crash loop.

::

    unread = given_back(f"{masked_url} queue {queue}")
    for message in self._buffer:  # on close: fetched, never handed out
        unread.add(message_id_of(message))
    ...
    attempt = max(1, delivery_count - unread.of(message_id))  # building a Delivery
"""

from __future__ import annotations

from collections import OrderedDict


class GivenBack:
    """How many times each message (by the broker's id for it, the same on every
    redelivery) was given back unread; it remembers the ``LIMIT`` ids touched last."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()

    def add(self, message_id: str) -> None:
        """``message_id`` was fetched and given back without reaching a handler."""
        self._counts[message_id] = self._counts.pop(message_id, 0) + 1
        while len(self._counts) > self.LIMIT:
            self._counts.popitem(last=False)

    def take(self, message_id: str) -> bool:
        """Use up one give-back of ``message_id``: True when there was one. For a broker
        that only flags a redelivery (a classic RabbitMQ queue) rather than counting
        them: a flagged redelivery that takes one was caused by a give-back, not a run."""
        count = self._counts.get(message_id, 0)
        if count <= 0:
            return False
        if count == 1:
            del self._counts[message_id]
        else:
            self._counts[message_id] = count - 1
        return True

    def forget(self, message_id: str) -> None:
        """The broker message is settled for good (acked, rejected, or replaced by a copy
        whose count starts anew): its give-backs say nothing about a later one."""
        self._counts.pop(message_id, None)

    def of(self, message_id: str) -> int:
        """How many of the message's deliveries so far were given back unread here."""
        return self._counts.get(message_id, 0)


_scopes: OrderedDict[str, GivenBack] = OrderedDict()
_MAX_SCOPES = 1000


def given_back(scope: str) -> GivenBack:
    """The process-wide record of ``scope`` (a queue, stream or consumer, named with
    its broker so two brokers' ids never mix)."""
    record = _scopes.get(scope)
    if record is None:
        record = _scopes[scope] = GivenBack()
        while len(_scopes) > _MAX_SCOPES:
            _scopes.popitem(last=False)
    else:
        _scopes.move_to_end(scope)
    return record
