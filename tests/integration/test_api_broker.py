"""The API's Kafka producer: connected at startup, so the first offers issued or events
posted do not queue behind its bootstrap; and an API that comes up without a broker."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from aisle.runtime import free_port
from aisle.stack import Stack
from tests.integration.conftest import isolated_settings
from tests.integration.util import eventually, uid

pytestmark = pytest.mark.integration


def _broker_check(url: str) -> str:
    return str(httpx.get(f"{url}/readyz").json()["checks"]["broker"])


def test_the_api_connects_to_the_broker_before_anything_is_sent(
        servers: dict[str, str], tmp_path: Path) -> None:
    stack = Stack.start(isolated_settings(servers, tmp_path), workers=0, api=True)
    try:
        # Nothing has been posted or issued: only the startup warm-up can connect it.
        eventually(lambda: _broker_check(stack.api_url or "") == "ok", timeout=15)
    finally:
        stack.stop()


def test_without_a_broker_the_api_serves_and_refuses_events_clearly(
        servers: dict[str, str], tmp_path: Path) -> None:
    stack = Stack.start(isolated_settings(servers, tmp_path), workers=0, api=False)
    try:
        nobody = f"127.0.0.1:{free_port()}"
        url = stack.start_api(extra_env={"AISLE_KAFKA_URL": nobody})
        with httpx.Client(base_url=url, timeout=15) as api:
            ready = api.get("/readyz")
            assert ready.status_code == 200  # the store answers: pages get served
            assert ready.json()["checks"]["broker"] == "not connected yet"
            assert api.get(f"/v1/users/{uid()}/recommendations").status_code == 200
            posted = api.post("/v1/events", json={
                "type": "product.viewed", "event_id": uid("e"), "user_id": uid(),
                "occurred_at": "2026-01-01T00:00:00Z", "payload": {"item_id": "i1"}})
            assert posted.status_code == 503
            assert "broker" in posted.json()["detail"]
        assert "event broker not reachable at startup" in stack.api.log_path.read_text()
    finally:
        stack.stop()
