"""The ``aisle`` command. Each command builds the settings once and hands them down."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from aisle import runtime
from aisle.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Aisle: event-sourced streaming recommendations for retail.")
console = Console(stderr=True)


def _settings() -> Settings:
    return Settings()


def _resolved() -> Settings:
    try:
        return runtime.resolve(_settings())
    except runtime.RuntimeNotFound as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def up(
    workers: Annotated[int, typer.Option(min=1, help="Faust worker processes")] = 1,
    port: Annotated[int, typer.Option(help="API port (0: a free one)")] = 0,
) -> None:
    """Start broker + store (embedded unless URLs are set), workers and the API."""
    from aisle.stack import Stack

    settings = _settings()
    _check_device(settings)
    stack = Stack.start(settings, workers=workers, api_port=port or None)
    path = stack.record()
    kind = " (Redis Cluster)" if stack.settings.redis_cluster else ""
    kind += _store_malloc(stack)
    console.print(f"broker  {stack.settings.kafka_url}\nstore   {stack.settings.redis_url}{kind}\n"
                  f"workers {len(stack.workers)} (logs in {stack.log_dir})\n"
                  f"runtime {path}")
    print(f"API: {stack.api_url}", flush=True)
    _wait_for_signal()
    console.print("stopping…")
    stack.stop()
    path.unlink(missing_ok=True)


def _store_malloc(stack: Any) -> str:
    """Which malloc the embedded Valkey runs with (jemalloc is preloaded when installed);
    empty for a store given by URL."""
    from aisle.runtime import allocator_of

    pids = [p.proc.pid for p in stack.embedded.processes if p.name.startswith("valkey")]
    if not pids:
        return ""
    return f" (malloc: {', '.join(sorted({allocator_of(pid) for pid in pids}))})"


def _wait_for_signal() -> None:
    stop = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop:
        time.sleep(0.2)


def _check_device(settings: Settings, always: bool = False) -> None:
    """Workers retrain on a schedule: a GPU they cannot use is an error at start, not in
    an hour (AISLE_MODEL__DEVICE)."""
    if not always and settings.worker.retrain_interval_s == 0:
        return
    from models.als import GPUUnavailable, resolve_device

    try:
        resolve_device(settings.model.device)
    except GPUUnavailable as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None


@app.command()
def worker() -> None:
    """Run one Faust worker (joins the consumer group; run several to scale out)."""
    from faust.worker import Worker

    from streams.app import build_app

    settings = _resolved()
    _check_device(settings)
    faust_app = build_app(settings)
    Worker(faust_app, loglevel=settings.log_level, quiet=True).execute_from_commandline()


@app.command()
def api(port: Annotated[int, typer.Option(help="port (default: settings)")] = 0) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    settings = _resolved()
    uvicorn.run("serving.app:create_app", factory=True, host=settings.serving.host,
                port=port or settings.serving.port, log_level="warning",
                loop="uvloop", http="httptools", access_log=False)


@app.command()
def replay(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    limit: Annotated[int | None, typer.Option(help="stop after this many source rows")] = None,
    speed: Annotated[float, typer.Option(help="0: as fast as possible; N: N× real time")] = 0,
) -> None:
    """Turn a dataset file into events on Kafka (Online Retail, Taobao)."""
    from aisle.replay import replay_file

    settings = _resolved()
    stats = asyncio.run(replay_file(settings, path, limit_rows=limit, speed=speed,
                                    console=console))
    console.print(stats.summary())


@app.command()
def train() -> None:
    """Full retrain from the stream's snapshot in Redis; publish a new model version."""
    from models.train import train_once

    settings = _resolved()
    _logging(settings)
    _check_device(settings, always=True)
    art = asyncio.run(train_once(settings))
    console.print(f"published model {art.version}: {art.stats}")


@app.command()
def stats() -> None:
    """Recompute customer population stats now; record lifecycle transitions."""
    from streams.timers import refresh_population
    from streams.topics import EventProducer

    settings = _resolved()
    _logging(settings)

    async def run() -> int:
        from feature_store.client import open_redis

        client = open_redis(settings)
        try:
            async with EventProducer(settings) as producer:
                return await refresh_population(settings, client, producer)
        finally:
            await client.aclose()

    console.print(f"population stats published; {asyncio.run(run())} lifecycle transitions")


@app.command()
def rebuild() -> None:
    """Wipe derived state and rebuild it from the log (workers pause meanwhile)."""
    from streams.rebuild import rebuild_from_log

    settings = _resolved()
    _logging(settings)
    result = asyncio.run(rebuild_from_log(settings))
    console.print(f"rebuilt: {result}")


@app.command()
def demo(
    exit_after: Annotated[bool, typer.Option("--exit", help="stop after printing")] = False,
    limit: Annotated[int | None, typer.Option(help="Online Retail rows to replay")] = None,
    data: Annotated[Path | None, typer.Option(help="dataset file")] = None,
) -> None:
    """Start everything, replay Online Retail, train, print recommendations."""
    from aisle.demo import run_demo

    raise typer.Exit(run_demo(_settings(), exit_after=exit_after, limit_rows=limit,
                              data=data, console=console))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the event envelope."""
    from streams.events import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command()
def dump(out: Annotated[Path | None, typer.Option(help="file (default stdout)")] = None,
         ) -> None:
    """Canonical dump of all derived state (for comparing live vs rebuilt)."""
    from feature_store.dump import dump_state

    settings = _resolved()
    text = json.dumps(asyncio.run(dump_state(settings)), indent=1, sort_keys=True)
    if out:
        out.write_text(text)
    else:
        print(text)


@app.command()
def lag() -> None:
    """Consumer lag of the worker group, per topic partition."""
    from streams.lag import group_lag

    settings = _resolved()
    for tp, n in sorted(asyncio.run(group_lag(settings)).items()):
        print(f"{tp.topic}[{tp.partition}]\t{n}")


from aisle.experiments_cli import app as experiments_app  # noqa: E402 (after the commands)

app.add_typer(experiments_app, name="experiments")
push_app = typer.Typer(no_args_is_help=True,
                       help="Push-notification candidates (docs/push.md).")
app.add_typer(push_app, name="push")


@push_app.command("tail")
def push_tail(
    from_beginning: Annotated[bool, typer.Option(help="start at the oldest candidate")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="raw JSON, one per line")] = False,
    count: Annotated[int, typer.Option(help="stop after this many (0: never)")] = 0,
) -> None:
    """Print candidates as the workers produce them (Ctrl-C stops)."""
    from push.tail import tail

    settings = _resolved()
    asyncio.run(tail(settings, from_beginning=from_beginning, as_json=as_json, count=count))


@push_app.command("schema")
def push_schema() -> None:
    """Print the JSON Schema of the candidate document (CloudEvents 1.0)."""
    from push.candidate import json_schema

    print(json.dumps(json_schema(), indent=2))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
