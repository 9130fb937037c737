"""`ledgerlog prune --before-height H [--archive DIR]` and `ledgerlog archive verify DIR`: delete
the events below a height after archiving them and recording the anchor rebuilds start from
(ops/data/prune.py); check an archive's checksums (ops/data/archive.py)."""
from __future__ import annotations

import os

import typer

from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.errors import NodeRunningError
from ledgerlog.ops.cli import app, config_of, emit, real_paths
from ledgerlog.ops.cli.progress import admin_with_progress, progress_bar, quiet_option
from ledgerlog.ops.query.client import NodeClient

__all__ = ["prune_command", "archive_verify"]

archive_app = typer.Typer(help="Archives of pruned records: verify.", no_args_is_help=True)
app.add_typer(archive_app, name="archive")


@app.command("prune")
def prune_command(ctx: typer.Context,
                  before_height: int = typer.Option(..., "--before-height", help="Delete every event below this height (at most the tip)."),
                  archive: str | None = typer.Option(None, "--archive", help="Directory the archive is written under, as h<H>/ "
                                                     "(default retention.archive_dir, i.e. <data-dir>/archive)."),
                  quiet: bool = quiet_option()) -> None:
    """Prune the log below a height: archive the records (Avro OCF + manifest with checksums), record
    the anchor reproject and verify start from, then delete them. Queries below the height answer
    410 PRUNED; proofs and tree heads stay valid.

    With a node running on the data dir, the node does it (admin API, action `prune`) and keeps
    serving (its progress drawn from the node's status). Running it again at the same height
    finishes an interrupted prune, else changes nothing."""
    from ledgerlog.ops.data.prune import prune
    from ledgerlog.streams.runner import Runner
    cfg = config_of(ctx)
    node = NodeClient.find(cfg)
    if node is not None:
        try:
            if not cfg.admin_token:
                raise NodeRunningError(f"a node is running on {cfg.data_dir} ({node.url}); stop it first, or set "
                                       "admin.token (LEDGERLOG_ADMIN_TOKEN) so the prune runs through the node")
            body = {"before_height": before_height, "archive": os.path.abspath(archive) if archive else None}
            emit({**admin_with_progress(node, "prune", cfg.admin_token, body, f"prune below {before_height}",
                                        quiet=quiet), "via": "node"})  # the client wrote <data_dir> out
        finally:
            node.close()
        return
    with open_chain(cfg) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, batch=cfg.fold_batch)
        try:
            with progress_bar(f"prune below {before_height}", unit=" records", quiet=quiet) as bar:
                result = prune(chain, runner, before_height, archive_parent=archive, progress=bar)
        finally:
            runner.close()
    emit({**real_paths(result), "via": "local"})


@archive_app.command("verify")
def archive_verify(path: str = typer.Argument(..., help="An archive (h<H>/ with manifest.json), or a directory of them."),
                   deep: bool = typer.Option(False, "--deep", help="Also read every record back (counts, offsets).")) -> None:
    """Check archives: each manifest's own checksum, exactly the listed files, every file's size and
    sha256 (and with --deep every record). Exit 0 when they hold, 1 naming the first bad file
    (CORRUPT), 2 when there is no archive at PATH."""
    from ledgerlog.ops.data.archive import archive_dirs, verify_archive
    out = []
    for d in archive_dirs(path):
        m = verify_archive(d, deep=deep)
        out.append({"path": os.path.abspath(d), "prune_height": m["prune_height"], "chain_id": m["chain_id"],
                    "files": len(m["files"]), "records": sum(f["records"] for f in m["files"].values()),
                    "manifest_sha256": m["manifest_sha256"]})
    emit({"ok": True, "deep": deep, "archives": out})
