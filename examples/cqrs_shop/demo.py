"""Run the shop once: ``python -m examples.cqrs_shop.demo [database URL]``.

Defaults to a SQLite file in a temporary directory; give
``postgresql://postgres:postgres@localhost:5432/<db>`` to use PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from eventbus.requests import RequestFailedError
from examples.cqrs_shop.app import Shop, open_shop
from examples.cqrs_shop.events import AddItem, ConfirmOrder, PlaceOrder


async def shop_day(shop: Shop) -> list[str]:
    """A few orders through the write side, each read back from the read side."""
    lines: list[str] = []
    await shop.execute(PlaceOrder(order_id="o-1", customer="ada"))
    await shop.execute(AddItem(order_id="o-1", sku="tea", qty=2, price_cents=450))
    await shop.execute(AddItem(order_id="o-1", sku="cake", qty=1, price_cents=300))
    await shop.execute(ConfirmOrder(order_id="o-1"))
    lines.append(f"read model: {await shop.summaries.order('o-1')}")
    try:
        await shop.execute(AddItem(order_id="o-1", sku="jam", qty=1, price_cents=200))
    except RequestFailedError as exc:
        lines.append(f"rejected: {exc.error_type}: {exc.error_message}")
    lines.append(f"ada: {await shop.summaries.customer('ada')} (orders, cents)")
    return lines


async def main(database_url: str) -> None:
    async with open_shop(database_url) as shop:
        for line in await shop_day(shop):
            print(line)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{tmp}/shop.db"))
