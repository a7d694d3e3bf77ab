"""A/B experiments end to end: admin API → experiment events → worker → assignment in
the API → exposure events → attribution in the stream → results. Real broker, Valkey,
worker process and API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from aisle.stack import Stack
from feature_store.keys import Keys
from models.assignment import bucket, in_layer_range, variant_for
from tests.integration.conftest import ADMIN_KEY
from tests.integration.util import catalog, event, eventually, uid

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
XID = f"blend-{uuid.uuid4().hex[:6]}"
# Variant "off" switches every candidate source off: its customers get popular items.
SPEC = {"id": XID, "surfaces": ["recommendations", "related"], "layer": "ranking",
        "layer_range": [0, 10000], "primary_metric": "ctr",
        "variants": [{"name": "control", "weight": 1},
                     {"name": "off", "weight": 1,
                      "params": {"blend_als": 0, "blend_copurchase": 0, "blend_coview": 0,
                                 "blend_session": 0, "blend_resume": 0, "blend_rebuy": 0}}],
        "guardrails": [{"metric": "revenue_per_user", "max_drop_pct": 10}]}


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@pytest.fixture(scope="module")
def world(stack: Stack, api: httpx.Client) -> Iterator[dict[str, Any]]:
    items = [catalog(f"i{n}", f"Item {n}", price=2.0 + n, stock=10) for n in range(6)]
    session = [event("product.viewed", {"item_id": f"i{n}"}, "seed", n, session_id="s1")
               for n in range(6)]
    assert api.post("/v1/events", json=items + session).status_code == 202
    users = [uid("x") for _ in range(30)]
    views = [event("product.viewed", {"item_id": "i0"}, u, 30, session_id=f"s-{u}")
             for u in users]
    assert api.post("/v1/events", json=views).status_code == 202
    eventually(lambda: api.get(f"/v1/users/{users[-1]}/recommendations").json()["items"])
    yield {"users": users}


def results(api: httpx.Client) -> dict[str, Any]:
    r = api.get(f"/v1/experiments/{XID}/results")
    assert r.status_code == 200, r.text
    return r.json()


def by_variant(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["variant"]: v for v in doc["variants"]}


def test_admin_api_validates_and_records(api: httpx.Client, world: dict) -> None:
    assert api.post("/v1/admin/experiments", json=SPEC).status_code == 401
    # Nor through the public events endpoint, which shops and browsers call.
    sneaky = {"type": "experiment.created", "event_id": uid("e"), "occurred_at": now_iso(),
              "payload": {**SPEC, "id": f"{XID}-sneaky"}}
    r = api.post("/v1/events", json=sneaky)
    assert r.status_code == 401 and "experiment.created" in r.json()["detail"]
    bad = {**SPEC, "variants": [{"name": "a", "weight": 1, "params": {"blend_alss": 1}},
                                {"name": "b", "weight": 1}]}
    r = api.post("/v1/admin/experiments", json=bad, headers=ADMIN)
    assert r.status_code == 422 and "blend_alss" in r.json()["detail"]
    assert api.post("/v1/admin/experiments", json=SPEC, headers=ADMIN).status_code == 202
    listed = eventually(lambda: [x for x in api.get("/v1/experiments").json()["experiments"]
                                 if x["id"] == XID])
    assert listed[0]["status"] == "running" and listed[0]["layer"] == "ranking"
    assert [v["name"] for v in listed[0]["variants"]] == ["control", "off"]
    # Same layer, overlapping range: refused; a disjoint range would be fine.
    other = {**SPEC, "id": f"{XID}-2"}
    r = api.post("/v1/admin/experiments", json=other, headers=ADMIN)
    assert r.status_code == 409 and "overlaps" in r.json()["detail"]
    assert api.get("/v1/experiments/nope/results").status_code == 404


def test_answers_carry_the_variant_and_log_one_exposure_each(api: httpx.Client,
                                                             world: dict) -> None:
    users, served = world["users"], 0
    strategies: dict[str, set[str]] = {"control": set(), "off": set()}
    for n, user in enumerate(users):
        for _ in range(1 + n % 2):  # some customers ask twice: two answers, two exposures
            body = api.get(f"/v1/users/{user}/recommendations?limit=3").json()
            served += 1
            want = variant_for([("control", 1), ("off", 1)], bucket(XID, user))
            assert in_layer_range("ranking", user, 0, 10000)
            assert body["experiments"] == [{"id": XID, "variant": want}]
            strategies[want].add(body["strategy"])
    # The variant's parameters change the answer, not just its label.
    assert strategies["control"] == {"personal"} and strategies["off"] == {"popular"}
    # Anonymous related answers are in no experiment; a customer's are.
    assert api.get("/v1/items/i0/related").json()["experiments"] == []
    body = api.get(f"/v1/items/i0/related?user_id={users[0]}").json()
    assert body["experiments"][0]["id"] == XID
    served += 1
    doc = eventually(lambda: (d := results(api)) and sum(
        v["exposures"] for v in d["variants"]) >= served and d)
    assert sum(v["exposures"] for v in doc["variants"]) == served
    assert sum(v["users"] for v in doc["variants"]) == len(users)
    assert doc["srm"]["p_value"] is not None or doc["srm"]["warning"]


def test_an_offers_experiment_reaches_only_its_segment(api: httpx.Client,
                                                      world: dict) -> None:
    """The offers answer derives the customer's profile only when something needs it:
    here the segment, for an experiment that targets one."""
    xid = f"welcome-{uuid.uuid4().hex[:6]}"
    spec = {"id": xid, "surfaces": ["offers"], "layer": "welcome", "segments": ["prospect"],
            "variants": [{"name": "control", "weight": 1},
                         {"name": "half", "weight": 1, "params": {"discount_scale": 0.5}}]}
    assert api.post("/v1/admin/experiments", json=spec, headers=ADMIN).status_code == 202
    eventually(lambda: [x for x in api.get("/v1/experiments").json()["experiments"]
                        if x["id"] == xid])
    buyer = uid("b")
    order = event("order.placed", {"order_id": f"o-{uuid.uuid4().hex[:8]}", "lines": [
        {"item_id": "i1", "quantity": 1, "unit_price": 3.0}]}, buyer, occurred_at=now_iso())
    assert api.post("/v1/events", json=[order]).status_code == 202
    eventually(lambda: api.get(f"/v1/users/{buyer}/profile").json()["known"])
    assert api.get(f"/v1/users/{buyer}/profile").json()["segment"] != "prospect"
    prospect = world["users"][5]
    assert api.get(f"/v1/users/{prospect}/profile").json()["segment"] == "prospect"
    want = variant_for([("control", 1), ("half", 1)], bucket(xid, prospect))
    for _ in range(2):  # the first answer may issue an offer; the second shows it
        body = api.get(f"/v1/users/{prospect}/offers").json()
        assert body["experiments"] == [{"id": xid, "variant": want}]
    assert api.get(f"/v1/users/{buyer}/offers").json()["experiments"] == []
    assert api.post(f"/v1/admin/experiments/{xid}/stop", headers=ADMIN).status_code == 202
    eventually(lambda: api.get(f"/v1/users/{prospect}/offers").json()["experiments"] == [])


def test_clicks_and_purchases_count_once(api: httpx.Client, world: dict,
                                         store: redis.Redis, stack: Stack) -> None:
    user = world["users"][3]
    body = api.get(f"/v1/users/{user}/recommendations?limit=3").json()
    variant, rid = body["experiments"][0]["variant"], body["request_id"]
    before = by_variant(eventually(lambda: (d := results(api)) and by_variant(d)[variant]
                                   ["exposures"] >= 1 and d))[variant]
    item = body["items"][0]["item_id"]
    clicks = [event("product.viewed", {"item_id": item, "request_id": rid}, user,
                    occurred_at=now_iso()) for _ in range(2)]  # two views, one answer
    order = event("order.placed", {"order_id": f"o-{uuid.uuid4().hex[:8]}", "lines": [
        {"item_id": item, "quantity": 2, "unit_price": 7.5}]}, user, occurred_at=now_iso())
    for docs in (clicks, [order], [order]):  # the order is delivered twice
        assert api.post("/v1/events", json=docs).status_code == 202
    eventually(lambda: (v := by_variant(results(api))[variant])["orders"]
                > before["orders"] and v["clicks"] > before["clicks"] and v)
    # (An item no answer showed: a view of a shown item would itself count as a click.)
    marker = event("product.viewed", {"item_id": "never-shown"}, user, occurred_at=now_iso())
    assert api.post("/v1/events", json=[marker]).status_code == 202
    # The marker follows both copies of the order on the customer's partition: once it is
    # applied, so is the duplicate.
    keys = Keys(stack.settings.features.key_prefix, stack.settings.features.shards)
    eventually(lambda: store.zscore(keys.user(user, "views"), "never-shown"))
    final = by_variant(results(api))[variant]
    assert final["clicks"] == before["clicks"] + 1
    assert final["orders"] == before["orders"] + 1
    assert final["revenue"] == pytest.approx(before["revenue"] + 15.0)
    assert final["converted"] == before["converted"] + 1


def test_results_document(api: httpx.Client, world: dict) -> None:
    doc = results(api)
    assert doc["experiment"] == XID and doc["control"] == "control"
    control, off = (by_variant(doc)[v] for v in ("control", "off"))
    assert control["lift"] is None
    for key in ("users", "exposures", "ctr", "conversion", "revenue_per_user", "aov"):
        assert key in off
    assert set(doc["srm"]) >= {"p_value", "ok", "warning"}
    assert doc["guardrails"][0]["metric"] == "revenue_per_user"
    series = api.get(f"/v1/experiments/{XID}/results?series=true").json()["series"]
    assert series and series[-1]["variants"]["control"]["users"] == control["users"]


def test_erasure_removes_experiment_state(api: httpx.Client, world: dict,
                                          store: redis.Redis, stack: Stack) -> None:
    user = world["users"][5]
    k = Keys(stack.settings.features.key_prefix, stack.settings.features.shards)
    keys = [k.user(user, "xp"), k.user(user, "xreql")]
    assert eventually(lambda: sum(store.exists(k) for k in keys) == 2)
    users_before = sum(v["users"] for v in results(api)["variants"])
    assert api.delete(f"/v1/users/{user}", headers=ADMIN).status_code == 202
    eventually(lambda: sum(store.exists(k) for k in keys) == 0)
    # Aggregates are not personal: they stay.
    assert sum(v["users"] for v in results(api)["variants"]) == users_before


def test_stopped_experiment_serves_no_variant(api: httpx.Client, world: dict) -> None:
    assert api.post(f"/v1/admin/experiments/{XID}/stop").status_code == 401
    assert api.post(f"/v1/admin/experiments/{XID}/stop", headers=ADMIN).status_code == 202
    eventually(lambda: [x for x in api.get("/v1/experiments").json()["experiments"]
                        if x["id"] == XID and x["status"] == "stopped"])
    user = world["users"][0]
    eventually(lambda: api.get(f"/v1/users/{user}/recommendations").json()["experiments"]
               == [])
    r = api.patch(f"/v1/admin/experiments/{XID}", json={"description": "x"}, headers=ADMIN)
    assert r.status_code == 409


def test_cli_create_list_report_plot(stack: Stack, api: httpx.Client, world: dict,
                                     tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aisle.cli import app

    xid = f"cli-{uuid.uuid4().hex[:6]}"
    spec = tmp_path / "x.toml"
    spec.write_text(f'id = "{xid}"\nsurfaces = ["offers"]\nlayer = "offers"\n'
                    'primary_metric = "conversion"\n'
                    '[[variants]]\nname = "control"\nweight = 1\n'
                    '[[variants]]\nname = "deeper"\nweight = 1\n'
                    'params = {discount_scale = 1.5}\n')
    env = {"AISLE_SERVING__ADMIN_API_KEY": ADMIN_KEY, "COLUMNS": "200"}
    runner = CliRunner()
    api_opt = ["--api", stack.api_url or ""]
    got = runner.invoke(app, ["experiments", "create", str(spec), *api_opt], env=env)
    assert got.exit_code == 0, got.output
    eventually(lambda: xid in runner.invoke(app, ["experiments", "list", *api_opt],
                                            env=env).output)
    user = world["users"][7]
    body = api.get(f"/v1/users/{user}/offers").json()
    assert [x["id"] for x in body["experiments"]] == [xid]
    out = tmp_path / "report.png"
    got = runner.invoke(app, ["experiments", "report", xid, "--plot", str(out), *api_opt],
                        env=env)
    assert got.exit_code == 0, got.output
    assert "control" in got.output and out.stat().st_size > 10_000
    got = runner.invoke(app, ["experiments", "stop", "nope", *api_opt], env=env)
    assert got.exit_code == 1 and "404" in got.output


def test_rebuilt_from_the_log_equals_live(stack: Stack, api: httpx.Client,
                                          world: dict) -> None:
    """Runs last: definitions, exposures, clicks, orders, erasure are all in the log."""
    import asyncio

    from feature_store.dump import dump_state
    from streams.lag import wait_caught_up
    from streams.rebuild import rebuild_from_log

    asyncio.run(wait_caught_up(stack.settings, timeout=60))
    before = results(api)
    live = asyncio.run(dump_state(stack.settings))
    assert any(":x:st:" in k for k in live) and any(":x:defs" in k for k in live)
    asyncio.run(rebuild_from_log(stack.settings))
    assert asyncio.run(dump_state(stack.settings)) == live
    after = results(api)
    assert after["variants"] == before["variants"]
