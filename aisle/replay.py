"""``aisle replay``: a dataset file → events on Kafka, with progress and optional pacing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from aisle.datasets import ReplayStats, open_dataset
from aisle.settings import Settings
from streams.events import AnyEvent
from streams.topics import EventProducer, ensure_topics

CHUNK = 2000


async def replay_file(settings: Settings, path: Path, limit_rows: int | None = None,
                      speed: float = 0.0, console: Console | None = None) -> ReplayStats:
    """Produce every event of ``path``; with ``speed`` N, pace them at N× data time."""
    await ensure_topics(settings)
    events, stats = open_dataset(path, limit_rows=limit_rows)
    progress = Progress(TextColumn("[bold]replay[/bold] {task.description}"), BarColumn(),
                        TextColumn("{task.completed:,} events"), TimeElapsedColumn(),
                        console=console, transient=False, disable=console is None)
    with progress:
        task = progress.add_task(path.name, total=None)
        async with EventProducer(settings, linger_ms=20) as producer:
            pacer = _Pacer(speed)
            chunk: list[AnyEvent] = []
            for event in events:
                chunk.append(event)
                if len(chunk) >= CHUNK or (speed and pacer.due(event)):
                    await pacer.wait(chunk[-1])
                    await producer.send_events(chunk)
                    progress.advance(task, len(chunk))
                    chunk = []
            if chunk:
                await producer.send_events(chunk)
                progress.advance(task, len(chunk))
    return stats


class _Pacer:
    """Keeps event time and wall time in step at ``speed``× (0: no pacing)."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.first_ts: float | None = None
        self.started = time.monotonic()

    def due(self, event: AnyEvent) -> bool:
        return self.first_ts is not None and self._delay(event) > 0.05

    def _delay(self, event: AnyEvent) -> float:
        if self.first_ts is None:
            self.first_ts = event.ts
        target = (event.ts - self.first_ts) / self.speed
        return target - (time.monotonic() - self.started)

    async def wait(self, event: AnyEvent) -> None:
        if self.speed > 0:
            delay = self._delay(event)
            if delay > 0:
                await asyncio.sleep(delay)
