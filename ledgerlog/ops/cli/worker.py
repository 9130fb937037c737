"""`ledgerlog worker ADDRESS`, the pool query of PROTOCOL.md §7, and `ledgerlog stream-worker`, a
Kafka-mode projection worker in a consumer group (ops/worker)."""
from __future__ import annotations

import typer

from ledgerlog.engine.config import MAX_PARTITIONS
from ledgerlog.engine.errors import UsageError
from ledgerlog.ops.cli import app, config_of, emit
from ledgerlog.ops.query.client import open_queries


@app.command()
def worker(ctx: typer.Context,
           address: str = typer.Argument(..., help="Pool worker address: print its PPLNS credit, paid and pending.")) -> None:
    """A pool worker's PPLNS credit, paid and pending."""
    with open_queries(config_of(ctx)) as q:
        emit(q.worker(address))


@app.command("stream-worker")
def stream_worker(ctx: typer.Context,
                  worker_dir: str = typer.Option(..., "--worker-dir", help="Directory of this worker's stores."),
                  data_dir: str | None = typer.Option(None, "--data-dir", help="Chain data directory (as the global option)."),
                  worker_id: str | None = typer.Option(None, "--id", help="Name shown in status (default host-pid)."),
                  host: str = typer.Option("127.0.0.1", "--host", help="Address of the status/query endpoint."),
                  port: int = typer.Option(0, "--port", min=0, max=65535,
                                           help="Port of the status/query endpoint (0: any free; see worker.json)."),
                  batch: int = typer.Option(5000, "--batch", min=1, help="Records per fold batch."),
                  session_timeout: float = typer.Option(6.0, "--session-timeout", min=1.0, max=3600.0,
                                                        help="Group session timeout, seconds (a dead worker's share moves after it)."),
                  shard: str | None = typer.Option(None, "--shard", help="Fold this projection (balances) "
                                                   "spread over the group by account, instead of whole projections."),
                  partitions: int = typer.Option(8, "--partitions", min=1, max=MAX_PARTITIONS, help="With --shard: partitions of the repartition "
                                                 "topic when it is created (the most workers that can share the fold).")) -> None:
    """Fold projections in a consumer group with the chain's other stream workers (Kafka log only).
    Each owns whole projections, keeps them under WORKER_DIR/projections like the embedded runner,
    and serves GET /status and /projections/<name> (redirecting to the owner). With --shard balances,
    the workers share one projection by account (docs/KAFKA.md) and serve GET /accounts/<address>."""
    from ledgerlog.ops.worker.run import run_worker  # faust loads only when a worker runs

    if session_timeout != session_timeout:  # NaN passes click's range check
        raise UsageError("--session-timeout must be a number of seconds from 1 to 3600")
    if data_dir is not None:
        ctx.find_root().obj["data_dir"] = data_dir
    cfg = config_of(ctx)
    raise typer.Exit(run_worker(cfg, worker_dir, worker_id=worker_id, host=host, port=port, batch=batch,
                                session_timeout=session_timeout, loglevel=cfg.log_level, shard=shard,
                                partitions=partitions))
