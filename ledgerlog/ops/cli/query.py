"""Query commands (answered from projections, with provenance) and `run`, the node."""
from __future__ import annotations

import typer

from ledgerlog.ops.cli import app, config_of, emit
from ledgerlog.ops.query.client import open_queries


@app.command()
def account(ctx: typer.Context, address: str,
            height: int | None = typer.Option(None, "--height", help="Balance as of this height.")) -> None:
    """Balance, staked and nonce of an address."""
    with open_queries(config_of(ctx)) as q:
        emit(q.account(address, height))


@app.command()
def block(ctx: typer.Context, height_or_hash: str = typer.Argument(..., metavar="HEIGHT|HASH")) -> None:
    """A block by height or hash."""
    with open_queries(config_of(ctx)) as q:
        emit(q.block(height_or_hash))


@app.command()
def tx(ctx: typer.Context, txid: str) -> None:
    """A transaction: confirmed (with its block), pending or evicted."""
    with open_queries(config_of(ctx)) as q:
        emit(q.tx(txid))


@app.command()
def provider(ctx: typer.Context, provider_id: str) -> None:
    """An energy provider's stake, price and settled/unsettled energy."""
    with open_queries(config_of(ctx)) as q:
        emit(q.provider(provider_id))


@app.command()
def run(ctx: typer.Context,
        simulate: bool = typer.Option(False, "--simulate", help="Also run a live simulated workload."),
        host: str | None = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
        port: int | None = typer.Option(None, "--port", help="Port (default 8080; 0 picks a free one)."),
        seed: int | None = typer.Option(None, "--seed", help="Simulator seed.")) -> None:
    """Run the node: admission, projections, HTTP API and dashboard. Stops cleanly on SIGINT/SIGTERM."""
    cfg = config_of(ctx, http_host=host, http_port=port)
    from ledgerlog.ops.api.server import bind
    from ledgerlog.ops.node.lifecycle import Node
    sock = bind(cfg.http_host, cfg.http_port)  # a port in use fails now, not after the catch-up
    from ledgerlog.ops.api.tracing import setup_tracing
    from ledgerlog.ops.node.logsetup import setup_logging
    setup_logging(cfg)  # stderr + <data_dir>/logs/node.log (rotated, JSON optional), SIGHUP reopens
    setup_tracing(cfg)  # OTLP span export when trace.otlp_endpoint / OTEL_EXPORTER_OTLP_ENDPOINT is set
    try:
        node = Node(cfg, simulate=simulate, seed=seed)
    except BaseException:
        sock.close()
        raise
    node.serve(cfg.http_host, cfg.http_port, sock)
