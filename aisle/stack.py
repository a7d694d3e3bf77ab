"""Runs the whole stack as child processes: embedded servers (when no URLs are given),
Faust workers and the API. ``aisle up`` and ``aisle demo`` use it; so do the tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, SecretStr

from aisle.runtime import (
    EmbeddedRuntime,
    ManagedProcess,
    free_port,
    port_free,
    spawn,
    start_embedded,
    wait_for_port,
    write_runtime,
)
from aisle.settings import Settings
from streams.topics import ensure_topics


def child_env(settings: Settings) -> dict[str, str]:
    """The settings as AISLE_* variables, so child processes see exactly these settings."""
    env: dict[str, str] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                flatten(f"{prefix}{name.upper()}__", getattr(value, name))
            return
        key = prefix.removesuffix("__")
        if value is None:
            return
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, list | dict):
            env[key] = json.dumps(value)  # complex values are JSON to pydantic-settings
        elif isinstance(value, Path):
            env[key] = str(value.resolve())
        else:
            env[key] = str(value)

    flatten("AISLE_", settings)
    return env


def aisle_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "aisle.cli", *args]


@dataclass
class Stack:
    settings: Settings
    embedded: EmbeddedRuntime = field(default_factory=EmbeddedRuntime)
    workers: list[ManagedProcess] = field(default_factory=list)
    api: ManagedProcess | None = None
    api_url: str | None = None

    @classmethod
    def start(cls, settings: Settings, workers: int = 1, api: bool = True,
              api_port: int | None = None, extra_env: dict[str, str] | None = None) -> Stack:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings, embedded = start_embedded(settings)
        stack = cls(settings, embedded)
        try:
            asyncio.run(ensure_topics(settings))
            for _ in range(workers):
                stack.add_worker(extra_env)
            if api:
                stack.start_api(api_port, extra_env)
        except BaseException:
            stack.stop()
            raise
        return stack

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    def add_worker(self, extra_env: dict[str, str] | None = None) -> ManagedProcess:
        n = len(self.workers)
        proc = spawn(f"worker-{n}", aisle_argv("worker"), self.log_dir,
                     {**child_env(self.settings), **(extra_env or {})})
        self.workers.append(proc)
        return proc

    def start_api(self, port: int | None = None, extra_env: dict[str, str] | None = None,
                  ) -> str:
        if port and not port_free(port):
            raise RuntimeError(f"port {port} is taken: pass another with --port")
        port = port or self.settings.serving.port or free_port()
        if not port_free(port):  # the default port is taken (another stack?): any free one
            port = free_port()
        self.api = spawn("api", aisle_argv("api", "--port", str(port)), self.log_dir,
                         {**child_env(self.settings), **(extra_env or {})})
        wait_for_port(port, 60, self.api.proc)
        self.api_url = f"http://127.0.0.1:{port}"
        _wait_ready(self.api_url, 60)
        if self.api.proc.poll() is not None:
            raise RuntimeError(f"the API exited; see {self.api.log_path}")
        return self.api_url

    def record(self) -> Path:
        pids = {"up": os.getpid(), **{w.name: w.proc.pid for w in self.workers}}
        if self.api:
            pids["api"] = self.api.proc.pid
        return write_runtime(self.settings, self.api_url, pids)

    def stop(self) -> None:
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            proc.stop()
        self.workers.clear()
        self.api = None
        self.embedded.stop()


def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"API at {url} not healthy after {timeout:.0f}s")
