"""`ledgerlog reproject`: rebuild projections from the log, blue/green — the replacement for
"reset chainstate and resync"."""
from __future__ import annotations

import typer

from ledgerlog import projections
from ledgerlog.engine.chain import open_chain
from ledgerlog.ops.cli import app, config_of, emit, fail
from ledgerlog.ops.cli.progress import admin_with_progress, progress_bar, quiet_option
from ledgerlog.ops.query.client import NodeClient
from ledgerlog.streams.reproject import reproject as run_reproject
from ledgerlog.streams.reproject import reproject_lock, total_records
from ledgerlog.streams.runner import Runner


@app.command()
def reproject(ctx: typer.Context,
              names: list[str] | None = typer.Argument(None, metavar="[NAME...]",
                                                          help=f"Projections (default all): {', '.join(projections.ALL)}."),
              keep: bool = typer.Option(True, "--keep/--discard",
                                        help="Keep the replaced version until the next reproject, or delete it."),
              quiet: bool = quiet_option()) -> None:
    """Rebuild projections from the log beside the live ones, compare digests, swap atomically.

    Resumes after being killed. With a node running on the data dir, the node does it (admin API)
    and keeps answering queries meanwhile (its progress drawn from the node's status). One at a time: exit 1, code REPROJECT_RUNNING, when
    another reproject of the data dir runs."""
    cfg = config_of(ctx)
    chosen = list(names) if names else list(projections.ALL)
    unknown = [n for n in chosen if n not in projections.ALL]
    if unknown:
        fail(f"unknown projections {unknown}; have {sorted(projections.ALL)}", 2)
    node = NodeClient.find(cfg)
    if node is not None:
        try:
            emit(admin_with_progress(node, "reproject", cfg.admin_token, {"names": chosen, "keep": keep},
                                     "reproject", unit=" events", quiet=quiet))
        finally:
            node.close()
        return
    with reproject_lock(cfg.projections_dir), open_chain(cfg, read_only=True) as chain:
        live = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, batch=cfg.fold_batch,
                      names=chosen, skip_corrupt=True)  # a corrupt live store is what a rebuild replaces
        try:
            with progress_bar("reproject", total=total_records(chain.log, chosen), unit=" events",
                              quiet=quiet) as tick:
                result = run_reproject(chain.log, chain.codec, chain.genesis, cfg.projections_dir, live, chosen,
                                       keep=keep, workers=cfg.fold_workers, progress=tick)
        finally:
            live.close()
    emit({"projections": result})
