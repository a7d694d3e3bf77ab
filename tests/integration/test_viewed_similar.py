""""Similar to what you just viewed" on the real stack: the worker's retrain publishes
item-kNN neighbours with the model, and the API, after one view, recommends the viewed
item's neighbours with the reason that names it.

Every other personal source is weighted 0 here (ALS, the co-count session source, the
customer's own items), so a "because you viewed …" reason can only come from this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from aisle.stack import Stack
from feature_store.client import open_redis
from models.artifacts import ModelArtifact, load_current
from models.train import train_once
from tests.integration.conftest import isolated_settings
from tests.integration.util import event, eventually, keys_of, loaded, stack_over_slice, uid

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = isolated_settings(servers, tmp_path_factory.mktemp("viewed"))
    settings = base.model_copy(update={"serving": base.serving.model_copy(update={
        "blend_als": 0.0, "blend_session": 0.0, "blend_resume": 0.0, "blend_rebuy": 0.0,
        "blend_viewed_similar": 1.0, "viewed_similar_source": "knn"})})
    with stack_over_slice(settings) as s:
        yield s


@pytest.fixture(scope="module")
def model(stack: Stack) -> ModelArtifact:
    async def train_and_load() -> ModelArtifact:
        await train_once(stack.settings)
        client = open_redis(stack.settings)
        try:
            art = await load_current(client, stack.settings.features.key_prefix)
        finally:
            await client.aclose()
        assert art is not None
        return art
    return asyncio.run(train_and_load())


def test_the_published_model_carries_item_knn_neighbours(stack: Stack,
                                                         model: ModelArtifact) -> None:
    assert model.knn_ids is not None and model.knn_scores is not None
    k = stack.settings.model.knn_neighbours
    assert model.knn_ids.shape == model.knn_scores.shape == (len(model.item_ids), k)
    assert (model.knn_ids >= 0).any()
    own = model.knn_ids == np.arange(len(model.item_ids))[:, None]
    assert not own.any()  # an item is not its own neighbour
    scores = model.knn_scores
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    assert ((model.knn_ids >= 0) == (scores > 0)).all()  # padding is -1 / 0


def test_a_just_viewed_items_neighbour_shows_with_its_reason(api, stack, store, model,
                                                             ) -> None:
    eventually(lambda: loaded(api, model.version))
    assert model.knn_ids is not None
    # The item with the most neighbours: its best ones are likely in stock and titled.
    viewed_row = int((model.knn_ids >= 0).sum(axis=1).argmax())
    viewed = model.item_ids[viewed_row]
    near = [model.item_ids[j] for j in model.knn_ids[viewed_row].tolist() if j >= 0]
    title = store.hget(keys_of(stack).item(viewed), "title").decode()
    user = uid("viewer")
    assert api.get(f"/v1/users/{user}/recommendations").json()["strategy"] == "popular"
    view = event("product.viewed", {"item_id": viewed}, user, session_id="s")
    assert api.post("/v1/events", json=[view]).status_code == 202

    def personal() -> dict | None:
        body = api.get(f"/v1/users/{user}/recommendations", params={"limit": 10}).json()
        return body if body["strategy"] == "personal" else None

    body = eventually(personal)
    because = [it for it in body["items"] if it["reason"] == f"because you viewed {title}"]
    assert because, body["items"]
    assert all(it["item_id"] in near for it in because)
    # Its best neighbour the API can show leads the list (one anchor: score = similarity).
    assert body["items"][0]["item_id"] == because[0]["item_id"]
    assert because[0]["item_id"] in near[:5]
