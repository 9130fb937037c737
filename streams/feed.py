"""A projection's input: its topic partitions merged in event-height order.

Each partition is read ahead in chunks and decoded once; records wait in per-partition buffers
until a k-way merge by height takes them. Heights never fall along a partition (admission
stamps the tip), so merging by the head of every non-empty buffer yields events in height
order across batches, and folds stay on their append-only fast path."""
from __future__ import annotations

import heapq
from collections import deque
from typing import Any, Callable

from engine.log.base import Log
from engine.movements import event_height

__all__ = ["Feed"]

TP = tuple[str, int]


class Feed:
    def __init__(self, log: Log, decode: Callable[[str, bytes], dict[str, Any]], topics: tuple[str, ...],
                 positions: dict[TP, int], chunk: int = 2000) -> None:
        self.log, self.decode, self.topics, self.chunk = log, decode, topics, chunk
        self._next: dict[TP, int] = {}
        self._buf: dict[TP, deque[tuple[int, int, dict[str, Any]]]] = {}
        for t in topics:
            for p in range(len(log.end_offsets(t))):
                self._next[(t, p)] = positions.get((t, p), 0)
                self._buf[(t, p)] = deque()

    def _refill(self, tp: TP, end: int) -> None:
        start = self._next[tp]
        if start >= end:
            return
        topic = tp[0]
        recs = self.log.read(topic, tp[1], start, min(self.chunk, end - start))
        buf, decode = self._buf[tp], self.decode
        for r in recs:
            ev = decode(topic, r.value)
            buf.append((event_height(topic, ev), r.offset, ev))
        if recs:
            self._next[tp] = recs[-1].offset + 1

    def take(self, limit: int, ends: dict[str, list[int]]) -> tuple[list[tuple[str, dict[str, Any]]], dict[TP, int], int]:
        """Up to ``limit`` events in height order, not past ``ends``; (events, new positions,
        highest height)."""
        heap: list[tuple[int, int, TP]] = []
        for i, tp in enumerate(self._buf):
            end = ends[tp[0]][tp[1]]
            if not self._buf[tp]:
                self._refill(tp, end)
            if self._buf[tp] and self._buf[tp][0][1] < end:
                heap.append((self._buf[tp][0][0], i, tp))
        heapq.heapify(heap)
        events: list[tuple[str, dict[str, Any]]] = []
        positions: dict[TP, int] = {}
        height = -1
        while heap and len(events) < limit:
            height, i, tp = heapq.heappop(heap)
            buf = self._buf[tp]
            _, offset, ev = buf.popleft()
            events.append((tp[0], ev))
            positions[tp] = offset + 1
            end = ends[tp[0]][tp[1]]
            if not buf:
                self._refill(tp, end)
            if buf and buf[0][1] < end:
                heapq.heappush(heap, (buf[0][0], i, tp))
        return events, positions, height
