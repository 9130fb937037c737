"""Peer: quixstreams on the Tansu broker. The neutral events (JSON) are produced to a
one-partition topic keyed by the chain (total order, like ledger.blocks) with quixstreams' own
producer; a stateful StreamingDataFrame (RocksDB state, no changelog topic) folds them:
``state.get``/``state.set`` per moved account. Fold events/s runs from the first event consumed
to the last, bounded by count and by time; the consumer group joins first (session 6 s)."""
from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from ..history import checksum
from .base import figure, load, main, moves, reference

KEY = b"chain"


def run(args: dict[str, Any]) -> dict[str, Any]:
    from quixstreams import Application
    from quixstreams.models import TopicConfig

    events = load(args)
    n, max_seconds = len(events), float(args["max_seconds"])
    addresses = sorted({a for e in events for a, _ in moves(e)})
    name = f"transfers-{uuid.uuid4().hex[:8]}"
    app = Application(broker_address=args["bootstrap"], consumer_group=f"quix-{name}", auto_offset_reset="earliest",
                      state_dir=os.path.join(args["work"], "quix-state"), use_changelog_topics=False,
                      consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
                      loglevel="WARNING")
    topic = app.topic(name, value_deserializer="json", key_deserializer="bytes",
                      config=TopicConfig(num_partitions=1, replication_factor=1,
                                         extra_config={"retention.ms": "-1", "cleanup.policy": "delete"}))

    import orjson
    payloads = [orjson.dumps(e) for e in events]
    with app.get_producer() as producer:
        t0 = time.perf_counter()
        for p in payloads:
            producer.produce(topic=topic.name, key=KEY, value=p)
        producer.flush()
        produce_s = time.perf_counter() - t0

    seen: dict[str, Any] = {"n": 0, "first": 0.0, "last": 0.0, "balances": None}
    started = time.perf_counter()
    timer = threading.Timer(max_seconds, app.stop)  # bounded in time from the first event on
    timer.daemon = True

    def fold(value: list[Any], state: Any) -> None:
        if seen["n"] == 0:
            seen["first"] = time.perf_counter()
            timer.start()
        for addr, delta in moves(value):
            state.set(addr, state.get(addr, 0) + delta)
        seen["n"] += 1
        seen["last"] = time.perf_counter()
        if seen["n"] == n:
            seen["balances"] = {a: state.get(a, 0) for a in addresses}
            app.stop()

    app.dataframe(topic).update(fold, stateful=True)
    guard = threading.Timer(max_seconds + 60, app.stop)  # nothing arrives: give up
    guard.daemon = True
    guard.start()
    try:
        app.run()
    finally:
        guard.cancel()
        timer.cancel()
    done = seen["n"]
    fold_s = seen["last"] - seen["first"]
    got = checksum(seen["balances"]) if seen["balances"] is not None else None
    return {"ingest": figure(n, produce_s, what="quixstreams producer to the broker"),
            "rebuild": figure(done, fold_s, what="stateful fold, first to last event", complete=done == n),
            "startup_seconds": round(seen["first"] - started, 2) if done else None,
            "checksum": got, "checksum_ok": got == reference(events) if got else None,
            "config": "quixstreams Application on Tansu; 1-partition topic keyed by chain; JSON values; "
                      "StreamingDataFrame.update(stateful=True), RocksDB state, use_changelog_topics=False, "
                      "commit_interval 5 s, at-least-once; session.timeout.ms 6000"}


if __name__ == "__main__":
    main(run)
