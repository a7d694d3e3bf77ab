"""Fault injection: workers killed or added mid-stream, the store and the broker taken away
and brought back. After every fault the live state must equal a rebuild from the log
(nothing lost, nothing counted twice), and the API must degrade, not fail."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from aisle.runtime import start_broker, start_store
from aisle.stack import Stack
from tests.conftest import ONLINE_RETAIL, TAOBAO
from tests.integration.conftest import isolated_settings
from tests.integration.faults_util import (
    BackgroundReplay,
    Server,
    applied_count,
    applied_not_committed,
    describe,
    live_equals_rebuild,
    log_tail,
    restart_worker,
    wait_applied,
    worker_shares,
)

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ worker crashes

@pytest.fixture(scope="module")
def crash_stack(servers: dict[str, str],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack.start(isolated_settings(servers, tmp_path_factory.mktemp("crash")),
                    workers=1, api=False)
    try:
        yield s
    finally:
        s.stop()


def test_killed_worker_loses_nothing_and_counts_nothing_twice(crash_stack: Stack) -> None:
    """kill -9 the only worker three times while it consumes ~25k events; each time a new
    one takes over from the last committed offsets."""
    stack = crash_stack
    replay = BackgroundReplay(stack.settings, [(ONLINE_RETAIL, 60_000), (TAOBAO, 10_000)])
    replay.start()
    redelivered = {}
    for n, threshold in enumerate((2_000, 8_000, 15_000)):
        wait_applied(stack.settings, threshold, timeout=120)
        victim = stack.workers[0]
        victim.proc.kill()
        victim.proc.wait(10)
        # What the dead worker applied but never committed comes back to its successor.
        redelivered[n] = applied_not_committed(stack.settings)
        restart_worker(stack, victim)
    replay.finish(timeout=120)
    keys, differ = live_equals_rebuild(stack.settings)
    assert keys > 10_000
    assert not differ, describe(f"{len(differ)} keys differ after the crashes:", differ[:20])
    assert any(redelivered.values()), describe(
        "no kill left applied-but-uncommitted records: the redelivery path was not tested",
        redelivered)
    assert stack.workers[0].proc.poll() is None, log_tail(stack.workers[0].log_path)
