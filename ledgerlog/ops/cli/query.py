"""Query commands (answered from projections, with provenance) and `run`, the node."""
from __future__ import annotations

import typer

from ledgerlog.ops.cli import app, config_of, emit
from ledgerlog.ops.query.client import open_queries
from ledgerlog.ops.query.queries import PROVIDERS_PAGE, PROVIDERS_PAGE_MAX


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


_HEIGHT = typer.Option(None, "--height", help="As of this height.")


@app.command()
def provider(ctx: typer.Context, provider_id: str, height: int | None = _HEIGHT) -> None:
    """An energy provider's stake, price and settled/unsettled energy."""
    with open_queries(config_of(ctx)) as q:
        emit(q.provider(provider_id, height))


@app.command()
def providers(ctx: typer.Context,
              limit: int | None = typer.Option(None, "--limit", help=f"Providers per page (1-{PROVIDERS_PAGE_MAX}, "
                                                                     f"default {PROVIDERS_PAGE})."),
              after: str | None = typer.Option(None, "--after", help="Start after this provider_id (a page's next_after)."),
              height: int | None = _HEIGHT,
              every: bool = typer.Option(False, "--all", help="Follow the pages to the end: every provider.")) -> None:
    """Energy providers in provider_id order, a page at a time (or --all of them)."""
    with open_queries(config_of(ctx)) as q:
        page = q.providers(limit, after, height)
        if not every:
            emit(page)
            return
        rows = list(page["providers"])
        while page["next_after"] is not None:  # the cursor only moves forward: this ends
            page = q.providers(limit, page["next_after"], height)
            rows += page["providers"]
        emit({"providers": rows, "count": len(rows), **({"height": height} if height is not None else {}),
              "provenance": page["provenance"]})


@app.command()
def market(ctx: typer.Context, height: int | None = _HEIGHT) -> None:
    """Energy market totals: providers, credited / settled / unsettled milli-kWh, average price."""
    with open_queries(config_of(ctx)) as q:
        emit(q.market(height))


@app.command()
def governance(ctx: typer.Context, height: int | None = _HEIGHT) -> None:
    """Governance parameters in force (min_stake, max_price_per_kwh) and the change that set each."""
    with open_queries(config_of(ctx)) as q:
        emit(q.governance(height))


@app.command()
def run(ctx: typer.Context,
        simulate: bool = typer.Option(False, "--simulate", help="Also run a live simulated workload."),
        host: str | None = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
        port: int | None = typer.Option(None, "--port", min=0, max=65535, help="Port (default 8080; 0 picks a free one)."),
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
