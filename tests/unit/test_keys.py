"""The key layout is a spec (docs/keys.md): names are pinned byte for byte."""

from feature_store.keys import USER_SUFFIXES, Keys


def test_key_names_are_exact() -> None:
    k = Keys("a", 8)
    s = k.shard_of("17850")
    assert k.user("17850", "views") == f"{{a:{s}}}:u:17850:views"
    assert k.item("85123A") == f"{{a:{k.shard_of('85123A')}}}:i:85123A"
    assert k.co("buy", 3, "85123A") == "{a:3}:co:buy:85123A"
    assert k.co_prefix("view", 3) + "X" == k.co("view", 3, "X")
    assert k.watermarks(5) == "{a:5}:wm"
    assert k.seen(5) == "{a:5}:seen"
    assert k.trending(0) == "{a:0}:trend"
    assert k.control("rebuild") == "{a:ctl}:rebuild"
    assert k.model_tag() == "{a:m}"


def test_shard_is_crc32_mod_shards_and_stable() -> None:
    import zlib

    k = Keys("a", 16)
    for key in ["17850", "guest-order-1", "85123A", "üser"]:
        assert k.shard_of(key) == zlib.crc32(key.encode()) % 16
    assert {Keys("a", 8).shard_of(str(i)) for i in range(200)} == set(range(8))


def test_all_keys_of_a_customer_share_one_hash_tag() -> None:
    k = Keys("shop", 32)
    tags = {key.split("}")[0] for key in k.user_keys("12345")}
    assert len(tags) == 1
    assert len(k.user_keys("12345")) == len(USER_SUFFIXES)
