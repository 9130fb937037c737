"""`ledgerlog worker`: `worker ADDRESS` is the pool query of PROTOCOL.md §7; `worker --worker-dir W`
runs a Kafka-mode projection worker in a consumer group (streams.faust_worker). One command name
serves both, because the protocol fixes `worker ADDRESS` and operators expect `ledgerlog worker`."""
from __future__ import annotations

import typer

from ledgerlog.ops.cli import app, config_of, emit, fail
from ledgerlog.ops.query.client import open_queries


@app.command()
def worker(ctx: typer.Context,
           address: str | None = typer.Argument(None, help="Pool worker address: print its PPLNS credit, paid and pending."),
           worker_dir: str | None = typer.Option(None, "--worker-dir", help="Run a projection worker with its stores here."),
           data_dir: str | None = typer.Option(None, "--data-dir", help="Chain data directory (as the global option)."),
           worker_id: str | None = typer.Option(None, "--id", help="Name shown in status (default host-pid)."),
           host: str = typer.Option("127.0.0.1", "--host", help="Address of the status/query endpoint."),
           port: int = typer.Option(0, "--port", help="Port of the status/query endpoint (0: any free; see worker.json)."),
           batch: int = typer.Option(5000, "--batch", help="Records per fold batch."),
           session_timeout: float = typer.Option(6.0, "--session-timeout",
                                                 help="Group session timeout, seconds (a dead worker's share moves after it).")) -> None:
    """`worker ADDRESS`: a pool worker's PPLNS credit, paid and pending.
    `worker --worker-dir W`: fold projections in a consumer group with other workers of the chain
    (Kafka log only); each owns whole projections, keeps them under W/projections like the
    embedded runner, and serves GET /status and /projections/<name> (redirecting to the owner)."""
    if address is not None:
        if worker_dir is not None:
            fail("give an ADDRESS to query or --worker-dir to run a worker, not both", 2)
        with open_queries(config_of(ctx)) as q:
            emit(q.worker(address))
        return
    if worker_dir is None:
        fail("usage: ledgerlog worker ADDRESS | ledgerlog worker --worker-dir DIR", 2)
    from ledgerlog.streams.faust_worker import run_worker  # faust loads only when a worker runs

    if data_dir is not None:
        ctx.find_root().obj["data_dir"] = data_dir
    cfg = config_of(ctx)
    raise typer.Exit(run_worker(cfg, worker_dir, worker_id=worker_id, host=host, port=port, batch=batch,
                                session_timeout=session_timeout,
                                loglevel=cfg.log_level))
