"""Dataset adapters: real files (first rows) and handcrafted rows for each edge case."""

from __future__ import annotations

import csv
import doctest
import gzip
from collections import Counter
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import msgspec
import pytest

from aisle import datasets
from aisle.datasets import (
    csvfile,
    online_retail,
    open_dataset,
    retail_rows,
    stats,
    taobao,
    titles,
)
from streams import events as ev
from tests.conftest import SHARED

DATA = SHARED
ONLINE_RETAIL = DATA / "online_retail" / "online_retail.csv.gz"
TAOBAO = DATA / "taobao_userbehavior" / "userbehavior_sample.csv.gz"

OR_HEADER = list(online_retail.COLUMNS)
TB_HEADER = list(taobao.COLUMNS)


def write_gz(path: Path, rows: list[list[str]]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as out:
        csv.writer(out).writerows(rows)
    return path


def sale(invoice: str, code: str, qty: int, price: float, when: str = "2010-12-01 08:26:00",
         customer: str = "17850", title: str = "WHITE HANGING HEART T-LIGHT HOLDER") -> list[str]:
    return [invoice, code, title, str(qty), when, str(price), customer, "United Kingdom"]


def replay(path: Path, limit_rows: int | None = None
           ) -> tuple[list[ev.AnyEvent], datasets.ReplayStats]:
    events, replay_stats = open_dataset(path, limit_rows=limit_rows)
    return list(events), replay_stats


def assert_well_formed(events: list[ev.AnyEvent]) -> None:
    """Valid on the wire, unique ids, time-ordered, every item catalogued before use."""
    assert events
    assert len({e.event_id for e in events}) == len(events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    catalogued: set[str] = set()
    for event in events:
        assert ev.decode_event(ev.encode_event(event)) == event
        if isinstance(event, ev.CatalogItemUpserted):
            catalogued.add(event.payload.item_id)
        elif isinstance(event, ev.OrderPlaced | ev.OrderCancelled):
            assert {line.item_id for line in event.payload.lines} <= catalogued
        else:
            assert event.payload.item_id in catalogued  # type: ignore[union-attr]


@pytest.mark.parametrize("module", [datasets, stats, csvfile, titles, retail_rows,
                                    online_retail, taobao])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.failed == 0


# ---------------------------------------------------------------- real files


def test_online_retail_real_rows_are_valid_events() -> None:
    events, st = replay(ONLINE_RETAIL, limit_rows=5000)
    assert_well_formed(events)
    assert st.rows_read == 5000
    assert dict(Counter(ev.event_type(e) for e in events)) == st.events
    assert st.skipped.get(retail_rows.SKIP_NON_PRODUCT, 0) > 0  # POST lines early on
    assert {e.source for e in events} == {"replay:online_retail"}
    first = events[0]
    assert isinstance(first, ev.CatalogItemUpserted)
    assert first.payload.item_id == "85123A" and first.payload.category == "holder"
    assert first.occurred_at == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)  # GMT in December


def test_taobao_real_rows_map_every_behaviour() -> None:
    events, st = replay(TAOBAO, limit_rows=5000)
    assert_well_formed(events)
    with gzip.open(TAOBAO, "rt", newline="") as raw:
        rows = list(islice(csv.reader(raw), 1, 5001))
    by_type = {"pv": "product.viewed", "cart": "cart.item_added",
               "fav": "product.favorited", "buy": "order.placed"}
    expected = Counter(by_type[row[3]] for row in rows)
    expected["catalog.item_upserted"] = len({row[1] for row in rows})
    assert st.events == dict(expected)
    assert st.rows_read == 5000 and st.rows_skipped == 0


@pytest.mark.parametrize("path", [ONLINE_RETAIL, TAOBAO])
def test_replaying_twice_gives_the_same_events(path: Path) -> None:
    first, _ = replay(path, limit_rows=3000)
    second, _ = replay(path, limit_rows=3000)
    assert [ev.encode_event(e) for e in first] == [ev.encode_event(e) for e in second]


def test_stats_fill_in_as_events_are_consumed() -> None:
    events, st = open_dataset(ONLINE_RETAIL, limit_rows=2000)
    assert st.rows_read == 0 and st.events == {}
    next(events)
    assert st.rows_read > 0 and st.events_emitted == 1


def test_unknown_file_names_the_supported_datasets(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "other.csv.gz", [["a", "b"], ["1", "2"]])
    with pytest.raises(ValueError, match="online_retail.*taobao"):
        open_dataset(path)


# ---------------------------------------------------------------- Online Retail edge cases


def test_cancellation_invoice_has_positive_quantities(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "or.csv.gz", [
        OR_HEADER, sale("536365", "85123A", 6, 2.55), sale("C536379", "85123A", -4, 2.55)])
    events, _ = replay(path)
    cancel = [e for e in events if isinstance(e, ev.OrderCancelled)]
    assert len(cancel) == 1
    assert cancel[0].event_id == "or-c-C536379" and cancel[0].payload.order_id == "C536379"
    assert [(li.item_id, li.quantity) for li in cancel[0].payload.lines] == [("85123A", 4)]
    assert cancel[0].user_id == "17850"


def test_guest_row_is_an_order_without_a_user(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "or.csv.gz", [
        OR_HEADER, sale("536544", "21773", 1, 2.51, customer=""),
        sale("536545", "21773", 1, 2.51, customer="12583.0")])
    events, st = replay(path)
    orders = [e for e in events if isinstance(e, ev.OrderPlaced)]
    assert [o.user_id for o in orders] == [None, "12583"]
    assert st.guest_orders == 1
    assert orders[0].routing_key == "536544"


@pytest.mark.parametrize("row,reason", [
    (sale("536365", "POST", 3, 18.0, title="POSTAGE"), retail_rows.SKIP_NON_PRODUCT),
    (sale("536365", "gift_0001_20", 1, 17.0, title="Dotcomgiftshop Gift Voucher £20.00"),
     retail_rows.SKIP_NON_PRODUCT),
    (sale("536365", "23444", 1, 15.0, title="Next Day Carriage"),
     retail_rows.SKIP_NON_PRODUCT),
    (sale("536365", "22139", 56, 0.0), retail_rows.SKIP_NO_PRICE),
    (sale("536365", "22139", -5, 1.0), retail_rows.SKIP_STOCK_ADJUSTMENT),
    (sale("536 365", "22139", 5, 1.0), "invalid InvoiceNo or CustomerID"),
    (sale("536365", "22139", 5, 1.0, when="yesterday"), "invalid InvoiceDate"),
    (sale("536365", "22139", 200_000, 1.0), "invalid quantity"),
    (["536365", "22139"], retail_rows.SKIP_MALFORMED),
])
def test_skipped_rows_are_counted_by_reason(tmp_path: Path, row: list[str],
                                            reason: str) -> None:
    path = write_gz(tmp_path / "or.csv.gz", [OR_HEADER, row, sale("536366", "85123A", 6, 2.55)])
    events, st = replay(path)
    assert st.skipped == {reason: 1}
    assert st.rows_read == 2
    assert [e.event_id for e in events] == ["or-cat-85123A", "or-o-536366"]


def test_catalog_upsert_precedes_first_order_once(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "or.csv.gz", [
        OR_HEADER, sale("536365", "85123a", 6, 2.55, title=" WHITE HANGING HEART  T-LIGHT HOLDER "),
        sale("536365", "71053", 6, 3.39, title="WHITE METAL LANTERN"),
        sale("536366", "85123A", 2, 2.95, when="2010-12-01 09:00:00")])
    events, _ = replay(path)
    assert [e.event_id for e in events] == [
        "or-cat-85123A", "or-cat-71053", "or-o-536365", "or-o-536366"]
    item = events[0].payload
    assert isinstance(item, ev.CatalogItem)
    assert (item.title, item.category, item.price, item.attributes) == (
        "WHITE HANGING HEART T-LIGHT HOLDER", "holder", 2.55, {"colour": "white"})
    order = events[2]
    assert isinstance(order, ev.OrderPlaced)
    assert order.session_id == "536365" and order.payload.order_id == "536365"
    assert [(li.item_id, li.quantity, li.unit_price, li.currency)
            for li in order.payload.lines] == [("85123A", 6, 2.55, "GBP"),
                                               ("71053", 6, 3.39, "GBP")]


def test_invoice_with_only_skipped_lines_yields_nothing(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "or.csv.gz", [
        OR_HEADER, sale("536365", "POST", 1, 18.0, title="POSTAGE"),
        sale("536365", "22139", 3, 0.0)])
    events, st = replay(path)
    assert events == [] and st.rows_skipped == 2


def test_summer_time_is_converted_to_utc(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "or.csv.gz", [OR_HEADER, sale("555000", "22139", 1, 4.95,
                                                              when="2011-06-01 10:00:00")])
    events, _ = replay(path)
    assert events[-1].occurred_at == datetime(2011, 6, 1, 9, 0, tzinfo=UTC)


def test_interrupted_invoice_is_still_one_order(tmp_path: Path) -> None:
    # As in the real file (542806 around C542805), here with the interruption a minute on.
    path = write_gz(tmp_path / "or.csv.gz", [
        OR_HEADER, sale("542806", "48194", 1, 7.95, when="2011-02-01 11:19:00", customer="12836"),
        sale("C542805", "85054", -1, 2.95, when="2011-02-01 11:20:00", customer="14606"),
        sale("542806", "22692", 2, 7.95, when="2011-02-01 11:20:00", customer="12836"),
        sale("542900", "22692", 1, 7.95, when="2011-02-01 12:00:00", customer="12836")])
    events, st = replay(path)
    orders = {e.event_id: e for e in events if not ev.is_catalog(e)}
    assert list(orders) == ["or-o-542806", "or-c-C542805", "or-o-542900"]
    placed = orders["or-o-542806"]
    assert isinstance(placed, ev.OrderPlaced)
    assert [li.item_id for li in placed.payload.lines] == ["48194", "22692"]
    assert placed.occurred_at == datetime(2011, 2, 1, 11, 20, tzinfo=UTC)  # its last line
    assert st.rows_skipped == 0
    assert_well_formed(events)


def test_line_after_its_invoice_closed_is_skipped(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "or.csv.gz", [
        OR_HEADER, sale("542806", "48194", 1, 7.95, when="2011-02-01 11:19:00"),
        sale("542807", "22692", 2, 7.95, when="2011-02-01 11:30:00"),
        sale("542806", "22692", 2, 7.95, when="2011-02-01 11:31:00")])
    events, st = replay(path)
    assert st.skipped == {online_retail.SKIP_LATE_LINE: 1}
    assert [e.event_id for e in events if not ev.is_catalog(e)] == ["or-o-542806", "or-o-542807"]


def test_invoice_too_long_for_one_event_goes_in_parts(tmp_path: Path) -> None:
    schema = msgspec.inspect.type_info(ev.Order)
    lines_type = next(f.type for f in schema.fields if f.name == "lines")  # type: ignore[attr-defined]
    assert lines_type.max_length == online_retail.MAX_ORDER_LINES
    rows = [sale("573585", f"{20000 + i}", 1, 1.0, customer="") for i in range(1002)]
    events, st = replay(write_gz(tmp_path / "or.csv.gz", [OR_HEADER, *rows]))
    orders = [e for e in events if isinstance(e, ev.OrderPlaced)]
    assert [(o.event_id, o.payload.order_id, len(o.payload.lines)) for o in orders] == [
        ("or-o-573585", "573585", 1000), ("or-o-573585-2", "573585-2", 2)]
    assert st.split_orders == 1
    assert_well_formed(events)


def test_online_retail_needs_its_header(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "or.csv.gz", [sale("536365", "85123A", 6, 2.55)])
    with pytest.raises(ValueError, match="unknown dataset"):
        open_dataset(path)


# ---------------------------------------------------------------- Taobao edge cases


def tb(user: str, item: str, behaviour: str, ts: int, category: str = "4181361") -> list[str]:
    return [user, item, category, behaviour, str(ts)]


T0 = 1511658000  # 2017-11-26 01:00:00 UTC


def test_taobao_behaviours_map_to_event_types(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "tb.csv.gz", [
        TB_HEADER, tb("1", "10", "pv", T0), tb("1", "10", "fav", T0 + 1),
        tb("1", "10", "cart", T0 + 2), tb("1", "10", "buy", T0 + 3)])
    events, st = replay(path)
    assert [type(e) for e in events] == [ev.CatalogItemUpserted, ev.ProductViewed,
                                         ev.ProductFavorited, ev.CartItemAdded, ev.OrderPlaced]
    catalog, _, _, cart, order = events
    assert isinstance(catalog.payload, ev.CatalogItem)
    assert (catalog.payload.title, catalog.payload.category, catalog.event_id) == (
        "Taobao item 10", "c4181361", "tb-cat-10")
    assert isinstance(cart.payload, ev.CartLine) and cart.payload.quantity == 1
    assert isinstance(order, ev.OrderPlaced)
    assert order.payload.order_id == f"tb-1-{T0 + 3}-10"
    assert [(li.quantity, li.unit_price, li.currency, li.category)
            for li in order.payload.lines] == [(1, 0.0, "CNY", "c4181361")]
    assert all(e.payload.category == "c4181361" for e in events[1:3])  # type: ignore[union-attr]
    assert events[1].occurred_at == datetime(2017, 11, 26, 1, 0, tzinfo=UTC)
    assert events[1].event_id == f"tb-pv-1-10-{T0}-0"
    assert st.guest_orders == 0
    assert_well_formed(events)


def test_taobao_session_splits_after_a_31_minute_gap(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "tb.csv.gz", [
        TB_HEADER, tb("1", "10", "pv", T0), tb("2", "11", "pv", T0),
        tb("1", "10", "pv", T0 + 30 * 60), tb("2", "11", "pv", T0 + 30 * 60 + 1),
        tb("1", "12", "pv", T0 + 61 * 60)])
    events, _ = replay(path)
    views = [(e.user_id, e.session_id) for e in events if isinstance(e, ev.ProductViewed)]
    assert views == [("1", "tb-s-1-0"), ("2", "tb-s-2-0"), ("1", "tb-s-1-0"),
                     ("2", "tb-s-2-1"), ("1", "tb-s-1-1")]


def test_taobao_header_is_optional_and_bad_rows_are_counted(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "tb.csv.gz", [
        tb("1", "10", "pv", T0), tb("1", "1x", "pv", T0), tb("1", "10", "like", T0),
        tb("1", "10", "pv", T0 + 5), tb("1", "10", "pv", T0 + 4), tb("1", "10", "pv", -1)])
    events, st = replay(path)
    assert st.rows_read == 6
    assert st.skipped == {"invalid id": 1, "unknown behaviour": 1,
                          taobao.SKIP_OUT_OF_ORDER: 1, "invalid timestamp": 1}
    assert [e.event_id for e in events if isinstance(e, ev.ProductViewed)] == [
        f"tb-pv-1-10-{T0}-0", f"tb-pv-1-10-{T0 + 5}-3"]
