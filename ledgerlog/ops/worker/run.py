"""`ledgerlog stream-worker`: one Kafka projection worker process. faust-streaming runs the group
membership (streams/faust_worker.py: the lease agent and the fold engine) on the main thread; the
HTTP endpoint (ops/worker/http.py) runs on uvicorn beside it."""
from __future__ import annotations

import json
import os
from typing import Any

from ledgerlog.engine.chain import write_atomic
from ledgerlog.engine.codec import Codec, Registry
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import ConfigError
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log import open_log
from ledgerlog.engine.log.base import Log
from ledgerlog.ops.worker.http import WorkerHttp
from ledgerlog.streams import catalog
from ledgerlog.streams.faust_worker import (
    FoldEngine,
    build_app,
    connection,
    ensure_lease_topic,
    group_id,
    lease_names,
)
from ledgerlog.streams.shards.engine import ShardEngine
from ledgerlog.streams.shards.group import build_shard_app
from ledgerlog.streams.shards.repartition import Names, source_partitions
from ledgerlog.streams.shards.topics import ensure_topics

__all__ = ["run_worker"]


def run_worker(config: Config, worker_dir: str, *, worker_id: str | None = None, host: str = "127.0.0.1",
               port: int = 0, batch: int = 5000, session_timeout: float = 6.0, loglevel: str = "WARNING",
               shard: str | None = None, partitions: int = 8) -> int:
    """Run one worker until SIGTERM/SIGINT (or the fold thread fails: exit 1). ``shard``: fold that
    projection (balances) over ``partitions`` repartition partitions with the chain's other sharded
    workers (streams/shards), instead of owning whole projections."""
    import faust

    bootstrap = connection(config).bootstrap
    if not os.path.exists(config.genesis_path):
        raise ConfigError(f"{config.data_dir} holds no chain; run `ledgerlog init` first")
    genesis = Genesis.load(config.genesis_path)
    os.makedirs(worker_dir, exist_ok=True)
    log = open_log(f"kafka://{bootstrap}", read_only=True, sync=False,
                   kafka=connection(config).replace(state_dir=None))
    engine: FoldEngine | ShardEngine | None = None
    server = None
    try:
        codec = Codec(Registry(log))
        info: dict[str, Any] = {"id": worker_id or f"{os.uname().nodename}-{os.getpid()}", "pid": os.getpid(),
                                "chain_id": genesis.chain_id}
        names = lease_names(config.projections_dir)  # the built-ins and the data dir's user projections
        if shard is None:
            mods = catalog.modules(config.projections_dir)
            engine = FoldEngine(log, codec, genesis, os.path.join(worker_dir, "projections"), batch=batch,
                                modules={n: mods[n] for n in names if n in mods})
            info.update(group=group_id(config, genesis), projections=list(names))
        else:
            engine = sharded = _shard_engine(config, log, codec, genesis, worker_dir, shard, partitions, batch)
            info.update(group=sharded.names.group, shard=shard, partitions=sharded.partitions)
        server = WorkerHttp(engine, info)
        server.listen(host, port)
        info["url"] = f"http://{host if ':' not in host else '[' + host + ']'}:{server.port}"
        if isinstance(engine, FoldEngine):
            app = build_app(config, genesis, engine, worker_dir=worker_dir, url=info["url"],
                            session_timeout=session_timeout, names=names)
            ensure_lease_topic(config, app.ledgerlog_lease, len(names))
        else:
            app = build_shard_app(config, sharded, worker_dir=worker_dir, url=info["url"],
                                  session_timeout=session_timeout)
            server.account_route = app.ledgerlog_account_route
        server.route = app.ledgerlog_route
        engine.start()
        server.start()
        write_atomic(os.path.join(worker_dir, "worker.json"), json.dumps(info).encode())
        worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return int(exc.code or 0) if engine.error is None else 1
        return 0 if engine.error is None else 1
    finally:
        if server is not None:
            server.stop()
        if engine is not None:
            engine.stop()
        log.close()


def _shard_engine(config: Config, log: Log, codec: Codec, genesis: Genesis, worker_dir: str, shard: str,
                  partitions: int, batch: int) -> ShardEngine:
    """The engine of a sharded worker, its topics created (an existing repartition topic keeps its
    partition count)."""
    if shard != "balances":
        raise ConfigError(f"--shard {shard[:64]!r}: only balances can be sharded (payouts and chainstate need "
                          "the whole chain, energy's market totals the whole market: docs/KAFKA.md); "
                          "drop --shard to fold whole projections")
    if partitions < 1:
        raise ConfigError(f"--partitions {partitions}: give at least 1")
    kafka = connection(config)
    names = Names(kafka.topic_prefix, genesis.hash)
    n = ensure_topics(kafka, names, partitions, len(source_partitions(log)))
    return ShardEngine(log, codec, genesis, kafka, names, n, os.path.join(worker_dir, "shards"), batch=batch)
