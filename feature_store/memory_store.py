"""The same write protocol as the Redis store, in process memory, for unit tests.

It runs the ops of :mod:`feature_store.updates` with the semantics of ``store.lua``; the
contract suite (``tests/integration/test_store_contract.py``) feeds both the same batches
and compares canonical dumps, so the two cannot drift apart silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from feature_store.canonical import canonical_value
from feature_store.keys import Keys
from feature_store.updates import Op, logaddexp, sampled_pairs

Zset = dict[str, float]
Hash = dict[str, Any]
BatchEvent = tuple[str, int, float, list[Op]]
# Keys left out of state dumps: folded-in vectors (the model's, not the log's) and the
# catalog change feed, numbered in apply order, which differs between a live run and a
# rebuild when two partitions' catalog events share a shard. Neither is state a replay
# must reproduce byte for byte.
DERIVED = (":vec", ":catalog:changes")



class MemoryStore:
    def __init__(self, keys: Keys, dedupe_window_s: float) -> None:
        self.keys = keys
        self.window = dedupe_window_s
        self.data: dict[str, Any] = {}
        self._meta_key = ""  # the shard being applied (store.lua's KEYS[3])
        self._ops: dict[str, Callable[[Op], None]] = {
            name.removeprefix("_op_"): getattr(self, name)
            for name in dir(self) if name.startswith("_op_")
        }

    # ------------------------------------------------------------ protocol
    def apply(self, shard: int, source: str, batch: Sequence[BatchEvent]) -> tuple[int, int, int]:
        wm_key, seen_key = self.keys.watermarks(shard), self.keys.seen(shard)
        self._meta_key = self.keys.meta(shard)
        meta = self._hash(self._meta_key)
        wms, seen = self._hash(wm_key), self._zset(seen_key)
        wm = int(wms.get(source, -1))
        maxts = float(meta.get("maxts", 0.0))
        maxoff, applied, dups, old = wm, 0, 0, 0
        for event_id, offset, ts, ops in batch:
            if 0 <= offset <= wm:
                old += 1
            elif event_id in seen:
                dups += 1
            else:
                seen[event_id] = ts
                for op in ops:
                    self._ops[op[0]](op)
                applied += 1
                maxts = max(maxts, ts)
            maxoff = max(maxoff, offset)
        if maxoff > wm:
            wms[source] = maxoff
        meta["maxts"] = maxts
        if applied:
            meta["applied"] = int(meta.get("applied", 0)) + applied
        for eid in [e for e, t in seen.items() if t < maxts - self.window]:
            del seen[eid]
        self._drop_empty()
        return applied, dups, old

    def dump(self, include_derived: bool = False) -> dict[str, Any]:
        return {k: canonical_value(k, v) for k, v in sorted(self.data.items())
                if include_derived or not k.endswith(DERIVED)}

    # ------------------------------------------------------------ containers
    def _zset(self, key: str) -> Zset:
        return self.data.setdefault(key, {})  # type: ignore[no-any-return]

    def _hash(self, key: str) -> Hash:
        return self.data.setdefault(key, {})  # type: ignore[no-any-return]

    def _list(self, key: str) -> list[Any]:
        return self.data.setdefault(key, [])  # type: ignore[no-any-return]

    def _set(self, key: str) -> set[str]:
        return self.data.setdefault(key, set())  # type: ignore[no-any-return]

    def _drop_empty(self) -> None:
        for key in [k for k, v in self.data.items() if not v and v != 0]:
            del self.data[key]

    # ------------------------------------------------------------ ops
    def _op_zmax(self, o: Op) -> None:
        z = self._zset(o[1])
        z[o[2]] = max(z.get(o[2], -math.inf), float(o[3]))

    def _trim(self, key: str, n: int) -> None:
        """Keep the n highest-scored members (ties: by member, as Redis ranks them)."""
        z = self._zset(key)
        keep = sorted(z.items(), key=lambda kv: (kv[1], kv[0]))[-n:] if n else []
        z.clear()
        z.update(keep)

    def _op_zmaxn(self, o: Op) -> None:
        added = o[2] not in self._zset(o[1])
        self._op_zmax(o)
        if added:
            self._trim(o[1], o[4])

    def _op_zinc(self, o: Op) -> None:
        z = self._zset(o[1])
        z[o[2]] = z.get(o[2], 0.0) + float(o[3])

    def _op_zlog(self, o: Op) -> None:
        z = self._zset(o[1])
        z[o[2]] = logaddexp(z[o[2]], o[3]) if o[2] in z else float(o[3])

    def _op_hinc(self, o: Op) -> None:
        h = self._hash(o[1])
        h[o[2]] = float(h.get(o[2], 0.0)) + float(o[3])

    def _op_hmax(self, o: Op) -> None:
        h = self._hash(o[1])
        if o[2] not in h or o[3] > float(h[o[2]]):
            h[o[2]] = o[3]

    def _op_hmin(self, o: Op) -> None:
        h = self._hash(o[1])
        if o[2] not in h or o[3] < float(h[o[2]]):
            h[o[2]] = o[3]

    def _op_hspan(self, o: Op) -> None:
        self._op_hmin(["hmin", o[1], o[2], o[4]])
        self._op_hmax(["hmax", o[1], o[3], o[4]])

    def _op_seen(self, o: Op) -> None:
        self._op_hspan(["hspan", o[1], "first_seen", "last_seen", o[4]])
        self._op_hinc(["hinc", o[2], o[3], 1])
        if len(o) > 5:
            self._op_sadd(["sadd", o[5], o[6]])

    def _op_hset(self, o: Op) -> None:
        self._hash(o[1])[o[2]] = o[3]

    def _op_hdel(self, o: Op) -> None:
        self._hash(o[1]).pop(o[2], None)

    def _set_newer(self, key: str, ts: float, fields: Sequence[Any]) -> tuple[bool, bool]:
        """store.lua's set_newer: (fields set, the hash had a ts before)."""
        h = self._hash(key)
        old = float(h["ts"]) if "ts" in h else None
        if old is not None and ts < old:
            return False, True
        h["ts"] = ts
        for name, value in zip(fields[::2], fields[1::2], strict=True):
            h[name] = value
        return True, old is not None

    def _op_hnewer(self, o: Op) -> None:
        self._set_newer(o[1], o[2], o[3:])

    def _op_catalog(self, o: Op) -> None:
        set_, existed = self._set_newer(o[1], o[4], o[5:])
        if set_ and existed:  # an update: numbered in the shard's catalog change feed
            meta = self._hash(self._meta_key)
            meta["catalog"] = int(meta.get("catalog", 0)) + 1
            self._zset(o[2])[o[3]] = float(meta["catalog"])

    def _op_lpush(self, o: Op) -> None:
        lst = self._list(o[1])
        lst.insert(0, o[2])
        del lst[o[3]:]

    def _op_sadd(self, o: Op) -> None:
        self._set(o[1]).add(o[2])

    def _op_srem(self, o: Op) -> None:
        self._set(o[1]).discard(o[2])

    def _op_buy(self, o: Op) -> None:
        bought = self._hash(o[1])
        n = int(bought.get(o[2], 0)) + 1
        bought[o[2]] = n
        if n in (1, 2):
            self._op_zinc(["zinc", o[3] if n == 1 else o[4], o[2], 1])

    def _op_session(self, o: Op) -> None:
        _, ksess, kitems, sid, item, ts, maxn, co = o
        sess = self._hash(ksess)
        if sess.get("id") != sid:
            self.data.pop(kitems, None)
            sess["id"] = sid
        items = self._zset(kitems)
        if item not in items:
            for other in items:
                self._op_zinc(["zinc", co + item, other, 1])
                self._op_zinc(["zinc", co + other, item, 1])
        self._op_zmaxn(["zmaxn", kitems, item, ts, maxn])

    def _op_basket(self, o: Op) -> None:
        co, items = o[1], o[2:]
        for a in items:
            for b in items:
                if a != b:
                    self._op_zinc(["zinc", co + a, b, 1])

    def _op_basketk(self, o: Op) -> None:
        co, seed, head, k, items = o[1], o[2], o[3], o[4], o[5:]
        self._op_basket(["basket", co, *items[:head]])
        for i, j in sampled_pairs(seed, len(items), head, k):
            self._op_zinc(["zinc", co + items[i], items[j], 1])
            self._op_zinc(["zinc", co + items[j], items[i], 1])

    def _op_cancel(self, o: Op) -> None:
        _, korders, krfm, order_id, amount, kspend, month = o
        if amount < 0:
            amount = float(self._hash(korders).pop(order_id, 0.0))
        rfm = self._hash(krfm)
        rfm["monetary"] = float(rfm.get("monetary", 0.0)) - amount
        rfm["cancels"] = int(rfm.get("cancels", 0)) + 1
        self._op_hinc(["hinc", kspend, month, -amount])

    def _op_hsetnx(self, o: Op) -> None:
        self._hash(o[1]).setdefault(o[2], o[3])

    def _op_del(self, o: Op) -> None:
        for key in o[1:]:
            self.data.pop(key, None)

    # ------------------------------------------------------------ experiments (A/B)
    def _xinc(self, st: str, variant: str, day: str, metric: str, d: float) -> None:
        if d != 0:
            self._op_hinc(["hinc", st, f"{variant}|{day}|{metric}", d])

    def _xget(self, kxp: str, exp: str, name: str, default: float) -> float:
        value = self._hash(kxp).get(f"{exp}|{name}")
        return default if value is None else float(value)

    def _op_xexpose(self, o: Op) -> None:
        _, kxp, kreq, kreql, krfm, prefix, exp, variant, rid, ts, day, nreq, kshown, shown = o
        st, xp = prefix + exp, self._hash(kxp)
        v = xp.get(f"{exp}|v")
        if v is None:
            v = variant
            x = float(self._hash(krfm).get("monetary", 0.0))
            xp.update({f"{exp}|v": v, f"{exp}|f": ts, f"{exp}|x": x})
            self._xinc(st, v, day, "users", 1)
            self._xinc(st, v, day, "x", x)
            self._xinc(st, v, day, "x2", x * x)
        else:
            if v != variant:
                self._xinc(st, v, day, "moved", 1)
            if ts < self._xget(kxp, exp, "f", ts):
                xp[f"{exp}|f"] = ts
        e, c = self._xget(kxp, exp, "e", 0), self._xget(kxp, exp, "c", 0)
        xp[f"{exp}|e"] = e + 1
        if ts > self._xget(kxp, exp, "l", ts - 1):
            xp[f"{exp}|l"] = ts
        self._xinc(st, v, day, "exp", 1)
        self._xinc(st, v, day, "e2", 2 * e + 1)
        self._xinc(st, v, day, "ec", c)
        req, pair = self._hash(kreq), f"{exp}={v}"
        if rid in req:
            req[rid] = f"{req[rid]};{pair}"
        else:
            req[rid] = pair
            self._hash(kshown)[rid] = shown
            order = self._list(kreql)
            order.insert(0, rid)
            while len(order) > nreq:
                old = order.pop()
                req.pop(old, None)
                self._hash(kshown).pop(old, None)

    def _op_xclick(self, o: Op) -> None:
        _, kxp, kreq, prefix, rid, day = o
        self._xclick(kxp, kreq, prefix, rid, day)

    def _op_xview(self, o: Op) -> None:
        _, kxp, kreq, kreql, kshown, prefix, item, ts, day, window = o
        needle = f",{item},"
        for rid in list(self.data.get(kreql, [])):  # newest first
            shown = self.data.get(kshown, {}).get(rid)
            if shown is None or rid not in self.data.get(kreq, {}):
                continue
            at, items = shown.split(" ", 1)
            if ts >= float(at) and ts - float(at) <= window and needle in items:
                self._xclick(kxp, kreq, prefix, rid, day)
                return

    def _xclick(self, kxp: str, kreq: str, prefix: str, rid: str, day: str) -> None:
        shown = self._hash(kreq).pop(rid, None)
        if shown is None:
            return
        xp = self._hash(kxp)
        for pair in shown.split(";"):
            exp = pair.split("=", 1)[0]
            v = xp.get(f"{exp}|v")
            if v is not None:
                e, c = self._xget(kxp, exp, "e", 0), self._xget(kxp, exp, "c", 0)
                xp[f"{exp}|c"] = c + 1
                self._xinc(prefix + exp, v, day, "clk", 1)
                self._xinc(prefix + exp, v, day, "c2", 2 * c + 1)
                self._xinc(prefix + exp, v, day, "ec", e)

    def _op_xconvert(self, o: Op) -> None:
        _, kxp, prefix, kind, ts, day, amount, window = o
        xp = self._hash(kxp)
        for field, v in list(xp.items()):
            if not field.endswith("|v"):
                continue
            exp = field[:-2]
            st = prefix + exp
            if not (self._xget(kxp, exp, "f", 0) <= ts <= self._xget(kxp, exp, "l", 0) + window):
                continue
            if kind == "cart":
                self._xinc(st, v, day, "cart", 1)
                continue
            n, r = self._xget(kxp, exp, "o", 0), self._xget(kxp, exp, "r", 0)
            x = self._xget(kxp, exp, "x", 0)
            if n == 0:
                self._xinc(st, v, day, "conv", 1)
            xp[f"{exp}|o"], xp[f"{exp}|r"] = n + 1, r + amount
            for metric, d in (("ord", 1), ("o2", 2 * n + 1), ("rev", amount),
                              ("r2", 2 * r * amount + amount * amount), ("rx", amount * x),
                              ("ro", r + amount * n + amount)):
                self._xinc(st, v, day, metric, d)
    def _op_zremle(self, o: Op) -> None:
        z = self._zset(o[1])
        if o[2] in z and z[o[2]] <= float(o[3]):
            del z[o[2]]

    def _op_unwatch(self, o: Op) -> None:
        for item in list(self.data.get(o[1], {})):
            self.data.get(o[2] + item, {}).pop(o[3], None)

    def _op_zremprefix(self, o: Op) -> None:
        z = self._zset(o[1])
        for member in [m for m in z if m.startswith(o[2])]:
            del z[member]
