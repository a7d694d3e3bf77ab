"""Keeping the garbage collector's full passes short in the API process.

The timeline (``benchmarks/serving_timeline.py``) showed the API's worst stalls at
1,000 req/s were Python's generation-2 collections: 150-240 ms each, a whole-heap
traversal of the model's id maps, catalog and per-customer caches, none of which is ever
cyclic garbage. ``gc.freeze()`` moves every object alive now into a permanent generation
the collector no longer traverses; reference counting still frees them when they drop
out of a cache, so only cyclic garbage that existed at the moment of a freeze is kept.

``freeze_survivors`` freezes once after start-up and then every ``interval_s``, so a
full collection only ever traverses what was allocated since the last freeze. The cost:
cyclic garbage that already reached the old generation when a freeze runs is never
freed (bounded by what one interval leaves there; not measured over days yet).
"""

from __future__ import annotations

import asyncio
import gc


def set_gen0_threshold(threshold: int) -> None:
    """Young collections every ``threshold`` net allocations (Python's default: 700);
    0 leaves Python's default."""
    if threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(threshold, gen1, gen2)


async def freeze_survivors(interval_s: float) -> None:
    """Run for the app's lifetime; on cancel (shutdown) the collector sees all again, so
    an app created inside another process (the tests) leaves it as it was."""
    gc.collect()  # once, at start-up: nothing is waiting on the loop yet
    gc.freeze()
    try:
        while True:
            await asyncio.sleep(interval_s)
            # Young cyclic garbage goes first (a gen-1 pass: a few ms), so what is frozen
            # is live data and whatever cyclic garbage already sat in the old generation.
            gc.collect(1)
            gc.freeze()  # O(1): splices the generations' lists into the permanent one
    finally:
        gc.unfreeze()
