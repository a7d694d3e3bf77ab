"""``aisle push tail``: the candidates topic, as it grows, for a person to read."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.text import Text

from aisle.settings import Settings
from push.candidate import Candidate, decode_candidate


def render(c: Candidate) -> Text:
    d = c.data
    items = ", ".join(f"{i.title or i.item_id}" + (f" ({i.price:g})" if i.price else "")
                      for i in d.items)
    offer = f" offer {d.offer.discount_pct:g}% until {d.offer.expires_at}" if d.offer else ""
    line = Text()
    line.append(f"{c.time} ", style="dim")
    line.append(f"{d.reason:<15}", style="bold cyan")
    line.append(f" p{d.priority:<3} {c.subject:<14} ")
    line.append(items or "-", style="green")
    line.append(offer, style="yellow")
    line.append(f"  until {d.expires_at}  [{c.id}]", style="dim")
    return line


async def tail(settings: Settings, *, from_beginning: bool = False, as_json: bool = False,
               count: int = 0) -> int:
    out = Console(highlight=False)
    # A group of its own, never committed: tailing must not take candidates away from
    # the push system's consumer group.
    consumer = AIOKafkaConsumer(
        settings.topics.push, bootstrap_servers=settings.bootstrap_servers,
        group_id=f"aisle-push-tail-{uuid.uuid4().hex[:8]}", enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest")
    await consumer.start()
    seen = 0
    try:
        async for msg in consumer:
            value = msg.value or b""
            if as_json:
                print(value.decode(), flush=True)
            else:
                out.print(render(decode_candidate(value)))
            seen += 1
            if count and seen >= count:
                break
    finally:
        await consumer.stop()
    return seen
