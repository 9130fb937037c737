"""`ledgerlog snapshot create|list|restore`: consistent snapshots of a chain (log, write-side
state, projections), taken while the node runs, and their verified, all-or-nothing restore."""
from __future__ import annotations

import os
from typing import Optional

import typer

from engine.chain import open_chain
from engine.errors import ConfigError, CorruptStoreError, StoreLockedError

from .cli import app, config_of, emit, fail
from .nodeclient import NodeClient

# ops.snapshot is imported inside the commands: it pulls in the admin API (FastAPI), which every
# other command would otherwise pay for at start-up. The node registers its "snapshot" admin
# action by importing ops.snapshot itself.

snapshot_app = typer.Typer(help="Snapshots of the chain: create, list, restore.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")


@snapshot_app.command("create")
def snapshot_create(ctx: typer.Context,
                    out: Optional[str] = typer.Option(None, "--out", help="Directory to write the snapshot in (default <data-dir>/snapshots)."),
                    with_keys: bool = typer.Option(False, "--with-keys", help="Also copy <data-dir>/keys (secrets!).")) -> None:
    """Snapshot the log, write-side state and projections; prints the snapshot's summary.

    With a node running on the data dir, the node takes it (admin API) and keeps running."""
    from .snapshot import create_snapshot, summary
    cfg = config_of(ctx)
    out_dir = os.path.abspath(out) if out else None
    node = NodeClient.find(cfg)
    if node is not None:
        try:
            result = node.admin("snapshot", cfg.admin_token, {"out": out_dir, "with_keys": with_keys}, timeout=None)
        finally:
            node.close()
        emit({**result, "via": "node"})
        return
    from streams.runner import Runner
    try:
        chain = open_chain(cfg)
    except StoreLockedError as exc:
        fail(f"{exc}; no node answers for {cfg.data_dir}: wait for that process to finish", 1, code="LOCKED")
        raise
    with chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            runner.catch_up()
            manifest = create_snapshot(chain, runner, out_dir, with_keys=with_keys)
        finally:
            runner.close()
    emit({**summary(manifest, manifest["path"]), "via": "local"})


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context,
                  directory: Optional[str] = typer.Option(None, "--dir", help="Directory holding snapshots (default <data-dir>/snapshots)."),
                  verify: bool = typer.Option(False, "--verify", help="Also check every file's size and sha256.")) -> None:
    """List snapshots, oldest first; "ok" is false for an unreadable or (with --verify) corrupt one."""
    from .snapshot import default_dir, list_snapshots
    d = directory or default_dir(ctx.find_root().obj["data_dir"])
    if directory and not os.path.isdir(directory):
        fail(f"no directory {directory}", 2)
    emit({"dir": os.path.abspath(d), "snapshots": list_snapshots(d, verify=verify)})


@snapshot_app.command("restore")
def snapshot_restore(ctx: typer.Context,
                     path: str = typer.Argument(..., help="The snapshot directory."),
                     force: bool = typer.Option(False, "--force", help="Replace an existing data dir (moved aside to <data-dir>.replaced-<time>).")) -> None:
    """Verify a snapshot and restore it as --data-dir: all or nothing.

    Exit 1 when the snapshot is corrupt, truncated or incomplete, or a node runs on the data dir;
    2 on a usage error (no snapshot there, the data dir is not empty without --force)."""
    from .snapshot import restore_snapshot
    data_dir = ctx.find_root().obj["data_dir"]
    try:
        result = restore_snapshot(path, data_dir, force=force)
    except CorruptStoreError as exc:
        fail(str(exc), 1, code="CORRUPT")
        raise
    except StoreLockedError as exc:
        fail(str(exc), 1, code="LOCKED")
        raise
    except ConfigError as exc:
        fail(str(exc), 2, code="USAGE")
        raise
    emit(result)
