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
from ledgerlog.ops.worker.http import WorkerHttp
from ledgerlog.streams.faust_worker import (
    FoldEngine,
    build_app,
    connection,
    ensure_lease_topic,
    group_id,
)

__all__ = ["run_worker"]


def run_worker(config: Config, worker_dir: str, *, worker_id: str | None = None, host: str = "127.0.0.1",
               port: int = 0, batch: int = 5000, session_timeout: float = 6.0, loglevel: str = "WARNING") -> int:
    """Run one worker until SIGTERM/SIGINT (or the fold thread fails: exit 1)."""
    import faust

    bootstrap = connection(config).bootstrap
    if not os.path.exists(config.genesis_path):
        raise ConfigError(f"{config.data_dir} holds no chain; run `ledgerlog init` first")
    genesis = Genesis.load(config.genesis_path)
    os.makedirs(worker_dir, exist_ok=True)
    log = open_log(f"kafka://{bootstrap}", read_only=True, sync=False,
                   kafka=connection(config).replace(state_dir=None))
    engine = None
    server = None
    try:
        codec = Codec(Registry(log))
        engine = FoldEngine(log, codec, genesis, os.path.join(worker_dir, "projections"), batch=batch)
        info: dict[str, Any] = {"id": worker_id or f"{os.uname().nodename}-{os.getpid()}", "pid": os.getpid(),
                                "group": group_id(config, genesis), "chain_id": genesis.chain_id}
        server = WorkerHttp(engine, info)
        server.listen(host, port)
        info["url"] = f"http://{host if ':' not in host else '[' + host + ']'}:{server.port}"
        app = build_app(config, genesis, engine, worker_dir=worker_dir, url=info["url"],
                        session_timeout=session_timeout)
        ensure_lease_topic(config, app.ledgerlog_lease)
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
