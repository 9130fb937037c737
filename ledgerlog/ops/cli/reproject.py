"""`ledgerlog reproject`: rebuild projections from the log, blue/green — the replacement for
"reset chainstate and resync"."""
from __future__ import annotations

import typer

from ledgerlog import projections
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.errors import UnknownProjectionError
from ledgerlog.ops.cli import app, config_of, emit, fail
from ledgerlog.ops.cli.progress import admin_with_progress, progress_bar, quiet_option
from ledgerlog.ops.data.anchorupgrade import try_upgrade_anchor
from ledgerlog.ops.query.client import NodeClient
from ledgerlog.streams import catalog
from ledgerlog.streams.reproject import not_rebuildable, reproject_lock, total_records
from ledgerlog.streams.reproject import reproject as run_reproject
from ledgerlog.streams.runner import Runner


@app.command()
def reproject(ctx: typer.Context,
              names: list[str] | None = typer.Argument(None, metavar="[NAME...]",
                                                          help=f"Projections (default all): {', '.join(projections.ALL)} "
                                                               "and the user projections registered with the data dir."),
              keep: bool = typer.Option(True, "--keep/--discard",
                                        help="Keep the replaced version until the next reproject, or delete it."),
              quiet: bool = quiet_option()) -> None:
    """Rebuild projections from the log beside the live ones, compare digests, swap atomically.

    Resumes after being killed. With a node running on the data dir, the node does it (admin API)
    and keeps answering queries meanwhile (its progress drawn from the node's status). One at a time: exit 1, code REPROJECT_RUNNING, when
    another reproject of the data dir runs."""
    cfg = config_of(ctx)
    left_out: dict[str, str] = {}
    if not names:  # all, less the user projections a pruned log cannot rebuild (named in the answer)
        with open_chain(cfg, read_only=True) as chain:
            left_out = not_rebuildable(cfg.projections_dir, chain.log)
    try:
        chosen = catalog.check_names(cfg.projections_dir,
                                     names or [n for n in catalog.names(cfg.projections_dir) if n not in left_out])
    except UnknownProjectionError as exc:  # a wrong argument of the command: USAGE, exit 2
        fail(str(exc), 2)
    not_rebuilt = {"not_rebuilt": [{"projection": n, "why": why} for n, why in left_out.items()]} if left_out else {}
    node = NodeClient.find(cfg)
    if node is not None:
        try:
            answer = admin_with_progress(node, "reproject", cfg.admin_token, {"names": chosen, "keep": keep},
                                         "reproject", unit=" events", quiet=quiet)
        finally:
            node.close()
        emit({**answer, **not_rebuilt} if isinstance(answer, dict) else answer)
        _refuse_disagreeing(answer.get("projections", []) if isinstance(answer, dict) else [])
        return
    with open_chain(cfg, read_only=True) as chain, reproject_lock(cfg.projections_dir):  # not a chain: nothing written
        try_upgrade_anchor(cfg, chain)  # a pruned log's anchor, up to this code's projections
        live = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, batch=cfg.fold_batch,
                      names=chosen, skip_corrupt=True)  # a corrupt live store is what a rebuild replaces
        try:
            with progress_bar("reproject", total=total_records(chain.log, chosen, cfg.projections_dir), unit=" events",
                              quiet=quiet) as tick:
                result = run_reproject(chain.log, chain.codec, chain.genesis, cfg.projections_dir, live, chosen,
                                       keep=keep, workers=cfg.fold_processes, progress=tick, serving=False)
        finally:
            live.close()
    emit({"projections": result, **not_rebuilt})
    _refuse_disagreeing(result)


def _refuse_disagreeing(result: list[dict]) -> None:
    """Exit 1 (NONDETERMINISTIC) if a rebuild disagreed with its live store (it was not swapped in)."""
    refused = [r["error"]["message"] for r in result if isinstance(r, dict) and "error" in r]
    if refused:
        fail("; ".join(refused), 1, code="NONDETERMINISTIC")
