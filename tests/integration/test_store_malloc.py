"""The embedded Valkey runs with jemalloc when the machine has it, libc malloc otherwise.

Read from the running server's memory map, not from our own bookkeeping: the test fails
if the preload is set but does not take (a wrong path, a binary that ignores it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from aisle.runtime import allocator_of, jemalloc_path, start_store


def _start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jemalloc: str | None) -> str:
    if jemalloc is None:
        monkeypatch.delenv("AISLE_STORE_JEMALLOC", raising=False)
    else:
        monkeypatch.setenv("AISLE_STORE_JEMALLOC", jemalloc)
    managed, url = start_store(tmp_path)
    try:
        client = redis.Redis.from_url(url)
        try:
            # The allocator serves real work: a write and a read back.
            client.set("malloc-check", b"x" * 4096)
            assert client.get("malloc-check") == b"x" * 4096
        finally:
            client.close()
        return allocator_of(managed.proc.pid)
    finally:
        managed.stop()


def test_jemalloc_is_preloaded_when_installed(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AISLE_STORE_JEMALLOC", raising=False)
    if jemalloc_path() is None:
        pytest.skip("no libjemalloc.so.2 here (apt-get install libjemalloc2; `make test` does)")
    assert _start(tmp_path, monkeypatch, None) == "jemalloc"


def test_off_keeps_libc_malloc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _start(tmp_path, monkeypatch, "off") == "libc"


def test_a_missing_path_falls_back_to_the_usual_places(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AISLE_STORE_JEMALLOC", str(tmp_path / "no-such-lib.so"))
    found = jemalloc_path()
    expected = "jemalloc" if found else "libc"
    assert _start(tmp_path, monkeypatch, str(tmp_path / "no-such-lib.so")) == expected
