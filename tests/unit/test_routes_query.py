"""The hot routes' query parsing (``serving.routes._query``) reads what starlette's
``request.query_params.get`` reads, for any query string, parsed once per string."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams
from starlette.requests import Request

from serving import routes


def request(query: bytes) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query,
                    "headers": []})


NAMES = ["limit", "context_item", "user_id", "series", "", "l%69mit", "x y"]
PIECES = st.lists(st.tuples(st.sampled_from(NAMES), st.text(max_size=6)), max_size=6)


@settings(max_examples=300, deadline=None)
@given(pieces=PIECES, separators=st.lists(st.sampled_from(["&", "&&", ";"]), min_size=6,
                                           max_size=6), encoded=st.booleans())
def test_query_reads_what_starlette_reads(pieces, separators, encoded) -> None:
    from urllib.parse import quote
    parts = [f"{name}={quote(value) if encoded else value}" if value or encoded else name
             for name, value in pieces]
    raw = "".join(p + s for p, s in zip(parts, separators, strict=False)).encode(
        "utf-8", "surrogatepass") if parts else b""
    theirs = QueryParams(raw)
    ours = routes._query(request(raw))
    for name in {*NAMES, *theirs.keys()}:
        assert ours.get(name) == theirs.get(name), (raw, name)


def test_query_is_parsed_once_per_string_and_the_memo_stays_bounded(monkeypatch) -> None:
    monkeypatch.setattr(routes, "_QUERIES", {})
    monkeypatch.setattr(routes, "_QUERIES_MAX", 3)
    first = routes._query(request(b"limit=10"))
    assert routes._query(request(b"limit=10")) is first
    for n in range(10):
        assert routes._query(request(f"user_id=u{n}&limit=5".encode())) == {
            "user_id": f"u{n}", "limit": "5"}
        assert len(routes._QUERIES) <= 3
    assert routes._query(request(b"limit=10")) == {"limit": "10"}
    routes._QUERIES.clear()
    long = b"limit=5&context_item=" + b"x" * 300
    assert routes._query(request(long)) == {"limit": "5", "context_item": "x" * 300}
    assert routes._QUERIES == {}  # read, not kept
