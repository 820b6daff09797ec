"""sfu.loop_time: a full collection after settle_heap() is cheap and is not charged to
the handler that was running when it started."""

from __future__ import annotations

import gc
import time

from sfu.loop_time import loop_cpu_time, settle_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_a_collection_inside_a_handler_is_not_charged_to_it():
    settle_heap()
    cycles = []
    for _ in range(200_000):
        a, b = Node(), Node()
        a.other, b.other = b, a
        cycles.append(a)
    start_cpu, start = time.thread_time(), loop_cpu_time()
    gc.collect()
    collection = time.thread_time() - start_cpu
    charged = loop_cpu_time() - start
    assert collection > 0.01, f"a collection over 400,000 objects took {collection * 1e3} ms"
    assert charged < collection / 10, f"{charged * 1e3:.2f} of {collection * 1e3:.2f} ms"
    del cycles


def test_the_startup_heap_is_frozen_out_of_full_collections():
    """What a full collection walks after settle_heap() is what was allocated since,
    not the startup heap (counted, not timed: the suite runs on a loaded machine)."""
    settle_heap()
    frozen = gc.get_freeze_count()
    walked = len(gc.get_objects())
    assert frozen > 10_000, f"{frozen} objects frozen"
    assert walked < frozen / 20, f"a full collection still walks {walked} of {frozen}"
