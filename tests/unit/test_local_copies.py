"""LocalCopies (feature_store/tracking.py): a read is kept only if no invalidation of its
customer, and no reset, came between the read being sent and its replies kept."""

from __future__ import annotations

from feature_store import tracking
from feature_store.keys import Keys
from feature_store.tracking import LocalCopies

KEYS = Keys("a", 8)


def key(user: str, suffix: str = "cart") -> bytes:
    return KEYS.user(user, suffix).encode()


def got(local: LocalCopies, user: str, full: bool) -> list | None:
    copy = local.get(user, full)
    return None if copy is None else copy.replies


def test_a_read_is_kept_until_its_customer_is_invalidated() -> None:
    local = LocalCopies(KEYS.user_of, 10)
    assert local.put("u1", True, ["r1"], local.token())
    assert got(local, "u1", True) == ["r1"]
    local.invalidated([key("u2"), KEYS.item("x").encode()])  # someone else; not a customer
    assert got(local, "u1", True) == ["r1"]
    local.invalidated([key("u1", "views")])
    assert got(local, "u1", True) is None


def test_a_read_raced_by_an_invalidation_is_not_kept() -> None:
    local = LocalCopies(KEYS.user_of, 10)
    token = local.token()            # the read goes out ...
    local.invalidated([key("u1")])   # ... a write lands, its message comes first
    assert not local.put("u1", True, ["old"], token)
    assert got(local, "u1", True) is None
    assert local.put("u2", True, ["other"], token)  # another customer's read is fine
    assert local.put("u1", True, ["new"], local.token())  # a read sent after it is kept
    assert got(local, "u1", True) == ["new"]


def test_a_reset_or_a_flush_drops_everything_and_the_reads_in_flight() -> None:
    for drop in (lambda c: c.reset(), lambda c: c.invalidated(None)):
        local = LocalCopies(KEYS.user_of, 10)
        local.put("u1", True, ["r1"], local.token())
        token = local.token()
        drop(local)
        assert got(local, "u1", True) is None
        assert not local.put("u2", True, ["r2"], token)
        assert local.put("u2", True, ["r2"], local.token())


def test_past_the_remembered_invalidations_older_reads_are_not_kept(monkeypatch) -> None:
    monkeypatch.setattr(tracking, "RECENT_MAX", 3)
    local = LocalCopies(KEYS.user_of, 10)
    token = local.token()
    local.invalidated([key("u1")])           # forgotten below: u1's read can't be judged
    local.invalidated([key(f"v{i}") for i in range(3)])
    assert not local.put("u1", True, ["old"], token)
    assert not local.put("w", True, ["any"], token)  # nor anyone's from before it
    assert local.put("w", True, ["any"], local.token())
    assert local.put("u1", True, ["new"], local.token())


def test_an_offers_read_does_not_serve_a_full_one_but_a_full_one_serves_both() -> None:
    local = LocalCopies(KEYS.user_of, 10)
    local.put("u1", False, ["offers"], local.token())
    assert got(local, "u1", True) is None and got(local, "u1", False) == ["offers"]
    local.put("u1", True, ["full"], local.token())
    assert got(local, "u1", False) == ["full"]


def test_the_least_recently_used_customer_goes_first() -> None:
    local = LocalCopies(KEYS.user_of, 2)
    for user in ("a", "b"):
        local.put(user, True, [user], local.token())
    got(local, "a", True)
    local.put("c", True, ["c"], local.token())
    assert got(local, "b", True) is None and got(local, "a", True) == ["a"]
    assert LocalCopies(KEYS.user_of, 0).put("a", True, [], 0) is False


def history_read(lines: int) -> list:
    line = b'["536365","85123A",1291191960.0,6,15.3,"home"]'
    views = [x for n in range(10) for x in (b"i%d" % n, b"17%d.5" % n)]
    return [views, [line[:-1] + b"%d]" % n for n in range(lines)], None, b"x" * 400]


def test_the_size_estimate_bounds_what_the_replies_take() -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        replies = history_read(200)
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert taken <= tracking.reply_bytes(replies) <= 1.3 * taken


def test_copies_are_kept_within_their_byte_budget() -> None:
    one = int(tracking.reply_bytes(history_read(50)) * tracking.DERIVED_SHARE)
    local = LocalCopies(KEYS.user_of, 100, max_bytes=int(2.5 * one))
    for user in ("a", "b", "c"):
        assert local.put(user, True, history_read(50), local.token())
    assert len(local) == 2 and got(local, "a", True) is None  # the oldest made room
    assert local.bytes == 2 * one
    assert not local.put("big", True, history_read(200), local.token())  # never fits
    local.invalidated([key("b")])
    assert local.bytes == one
