"""Peer: faust-streaming on the Tansu broker. The neutral events (JSON bytes) are sent to a
one-partition topic keyed by the chain with faust's own producer (``topic.send``); an agent
consumes them in batches (``stream.take_events(1000, within=0.5)``, the ``take`` that keeps the
events): each batch is folded into a dict of deltas and the touched accounts are written once
to a faust Table (RocksDB store via rocksdict, changelogged to the broker as faust does) --
ledgerlog's own lesson (fold in memory, write dirty keys) applied inside faust. A table write
needs a current event (it picks the partition of its store and changelog); ``take`` runs
without one, so the batch's last event is made current first (``Stream._set_current_event``;
``use_partitioner=True`` instead fails in aiokafka's partitioner against Tansu). Fold events/s runs from
the first event folded to the last, bounded by count and by time; the group joins first
(session 6 s)."""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import orjson

from ..history import checksum
from .base import figure, load, main, moves, reference

KEY = b"chain"
TAKE = 1000


def _create_topic(bootstrap: str, name: str) -> None:
    """The source topic, one partition, made before faust's producer could auto-create it."""
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics([NewTopic(name, 1, 1, config={"retention.ms": "-1", "cleanup.policy": "delete"})])
    fut[name].result(timeout=30)


def run(args: dict[str, Any]) -> dict[str, Any]:
    import faust
    from faust.stores import rocksdb as faust_rocksdb
    _create_topic(args["bootstrap"], name := f"transfers-{uuid.uuid4().hex[:8]}")
    events = load(args)
    n, max_seconds = len(events), float(args["max_seconds"])
    addresses = sorted({a for e in events for a, _ in moves(e)})
    store = "rocksdb://" if faust_rocksdb.USE_ROCKSDICT else "memory://"
    app = faust.App(f"faust-{name}", broker=f"kafka://{args['bootstrap']}", store=store,
                    datadir=os.path.join(args["work"], "faust-data"), topic_partitions=1,
                    broker_session_timeout=6.0, broker_heartbeat_interval=1.0, web_enabled=False,
                    consumer_auto_offset_reset="earliest", producer_partitioner=None)
    topic = app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                      partitions=1)
    table = app.Table("balances", default=int, partitions=1)
    produced = asyncio.Event()
    seen: dict[str, Any] = {"n": 0, "first": 0.0, "last": 0.0, "balances": None, "produce_s": None}
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    payloads = [orjson.dumps(e) for e in events]

    async def stop_later() -> None:
        await asyncio.sleep(0)
        await worker.stop()

    @app.task
    async def produce() -> None:
        t0 = time.perf_counter()
        for p in payloads:
            await topic.send(key=KEY, value=p)
        await app.producer.flush()
        seen["produce_s"] = time.perf_counter() - t0
        produced.set()

    @app.agent(topic)
    async def fold(stream: Any) -> None:
        try:
            await _fold(stream)
        except Exception as exc:
            seen["error"] = f"{type(exc).__name__}: {exc}"
            asyncio.ensure_future(stop_later())
            raise

    async def _fold(stream: Any) -> None:
        await produced.wait()
        async for batch in stream.take_events(TAKE, within=0.5):
            if seen["n"] == 0:
                seen["first"] = time.perf_counter()
            deltas: dict[str, int] = {}
            for ev in batch:
                for addr, delta in moves(orjson.loads(ev.value)):
                    deltas[addr] = deltas.get(addr, 0) + delta
            stream._set_current_event(batch[-1])
            for addr, delta in deltas.items():  # only the keys this batch touched, once each
                table[addr] += delta
            seen["n"] += len(batch)
            seen["last"] = time.perf_counter()
            if seen["n"] >= n or seen["last"] - seen["first"] > max_seconds:
                if seen["n"] >= n:
                    seen["balances"] = {a: table[a] for a in addresses}
                asyncio.ensure_future(stop_later())
                return

    async def guard() -> None:  # nothing arrives, or it never finishes: give up
        await asyncio.sleep(max_seconds + 90)
        await worker.stop()

    @app.task
    async def watchdog() -> None:
        asyncio.ensure_future(guard())

    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    if seen.get("error"):
        raise RuntimeError(seen["error"])
    done = seen["n"]
    got = checksum(seen["balances"]) if seen["balances"] is not None else None
    if seen["produce_s"] is None:
        raise RuntimeError("faust never finished producing")
    return {"ingest": figure(n, seen["produce_s"], what="faust producer (topic.send) to the broker"),
            "rebuild": figure(done, seen["last"] - seen["first"], what="agent fold, first to last event",
                              complete=done >= n),
            "checksum": got, "checksum_ok": got == reference(events) if got else None,
            "config": f"faust-streaming App on Tansu; 1-partition topic keyed by chain; raw JSON values; "
                      f"agent with stream.take_events({TAKE}, within=0.5), deltas folded per batch, touched "
                      f"accounts written once per batch to a Table (store {store}, changelog topic); session 6 s"}


if __name__ == "__main__":
    main(run)
