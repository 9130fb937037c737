"""`ledgerlog snapshot create|list|verify|restore|prune`: consistent snapshots of a chain (log,
write-side state, projections), taken while the node runs, independent copies unless --link,
checked file by file, their verified, crash-safe restore, and their retention."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import typer

from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.errors import ConfigError, CorruptStoreError, StoreLockedError
from ledgerlog.ops.cli import app, config_of, emit, fail
from ledgerlog.ops.cli.progress import admin_with_progress, progress_bar, quiet_option
from ledgerlog.ops.query.client import NodeClient

# ops.snapshot is imported inside the commands: it pulls in the admin API (FastAPI), which every
# other command would otherwise pay for at start-up. The node registers its "snapshot" admin
# action by importing ops.snapshot itself.

snapshot_app = typer.Typer(help="Snapshots of the chain: create, list, verify, restore, prune.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")


@snapshot_app.command("create")
def snapshot_create(ctx: typer.Context,
                    out: str | None = typer.Option(None, "--out", help="Directory to write the snapshot in (default snapshot.dir, i.e. <data-dir>/snapshots). With a node running it must be under snapshot.dir."),
                    with_keys: bool = typer.Option(False, "--with-keys", help="Also copy <data-dir>/keys (secrets!)."),
                    link: bool = typer.Option(False, "--link", help="Hard-link the live SST files instead of copying them: a fast local checkpoint, NOT a backup."),
                    quiet: bool = quiet_option()) -> None:
    """Snapshot the log, write-side state and projections; prints the snapshot's summary.

    Every file is copied (an independent backup) unless --link. With a node running on the data
    dir, the node takes it (admin API) and keeps running."""
    from ledgerlog.ops.data.snapshot import create_snapshot, inside, summary
    cfg = config_of(ctx)
    out_dir = os.path.abspath(out) if out else cfg.snapshots_dir
    node = NodeClient.find(cfg)
    if node is not None:
        try:
            if inside(cfg.snapshots_dir, out_dir) is None:
                fail(f"a running node writes snapshots only under snapshot.dir ({cfg.snapshots_dir}); "
                     f"set snapshot.dir (config.toml or LEDGERLOG_SNAPSHOT_DIR) and restart the node, "
                     f"or stop it to snapshot elsewhere", 2, code="SNAPSHOT_DIR_REFUSED")
            result = admin_with_progress(node, "snapshot", cfg.admin_token,
                                         {"out": out_dir, "with_keys": with_keys, "link": link},
                                         "snapshot", unit="B", quiet=quiet)
        finally:
            node.close()
        where = os.path.join(os.path.realpath(cfg.snapshots_dir), result.pop("dir", ""))
        emit({**result, "path": os.path.join(where, result["name"]), "via": "node"})
        return
    from ledgerlog.streams.runner import Runner
    try:
        chain = open_chain(cfg)
    except StoreLockedError as exc:
        fail(f"{exc}; no node answers for {cfg.data_dir}: wait for that process to finish", 1, code="LOCKED")
        raise
    with chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            runner.catch_up()
            with progress_bar("snapshot", unit="B", quiet=quiet) as bar:
                manifest = create_snapshot(chain, runner, out_dir, with_keys=with_keys, link=link, progress=bar)
        finally:
            runner.close()
    emit({**summary(manifest, manifest["path"]), "via": "local",
          "same_filesystem_as_data": manifest["same_filesystem_as_data"]})


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context,
                  directory: str | None = typer.Option(None, "--dir", help="Directory holding snapshots (default snapshot.dir, i.e. <data-dir>/snapshots)."),
                  verify: bool = typer.Option(False, "--verify", help="Also check every file's size and sha256.")) -> None:
    """List snapshots, oldest first; "ok" is false for an unreadable or (with --verify) corrupt one."""
    from ledgerlog.ops.data.snapshot import list_snapshots
    d = directory or config_of(ctx).snapshots_dir
    if directory and not os.path.isdir(directory):
        fail(f"no directory {directory}", 2)
    emit({"dir": os.path.abspath(d), "snapshots": list_snapshots(d, verify=verify)})


@snapshot_app.command("prune")
def snapshot_prune(ctx: typer.Context,
                   keep: int = typer.Option(..., "--keep", min=1, help="Keep the newest N snapshots of each chain (1 or more: the newest is never deleted)."),
                   older_than: str | None = typer.Option(None, "--older-than", help="Delete one beyond the newest N only once it is older than this: 30m, 12h, 7d, 2w."),
                   directory: str | None = typer.Option(None, "--dir", help="Directory holding snapshots (default snapshot.dir). With a node running it must be under snapshot.dir."),
                   dry_run: bool = typer.Option(False, "--dry-run", help="Report what would be deleted; delete nothing.")) -> None:
    """Delete old snapshots: those beyond the newest --keep that are also older than --older-than.

    Never the newest, never one a restore or verify is reading, never anything but an intact
    snapshot directly in the directory. Prints what was kept (and why), deleted and ignored, and
    the bytes freed; exit 1 when a deletion failed. With a node running, the node prunes (admin
    action snapshot-prune, recorded on ledger.admin)."""
    from ledgerlog.engine.durations import parse_duration
    from ledgerlog.ops.cli.progress import progress_bar
    from ledgerlog.ops.data.snapshot import inside
    from ledgerlog.ops.data.snapshot_prune import apply_prune, plan_prune
    cfg = config_of(ctx)
    try:
        seconds = None if older_than is None else parse_duration(older_than)
    except ValueError as exc:
        fail(f"--older-than: {exc}", 2, code="USAGE")
    if directory and not os.path.isdir(directory):
        fail(f"no directory {directory}", 2, code="USAGE")
    where = os.path.abspath(directory) if directory else cfg.snapshots_dir
    node = NodeClient.find(cfg)
    if node is not None:
        try:
            if inside(cfg.snapshots_dir, where) is None:
                fail(f"a running node prunes only under snapshot.dir ({cfg.snapshots_dir}); stop it to prune "
                     f"{where}", 2, code="SNAPSHOT_DIR_REFUSED")
            result = node.admin("snapshot-prune", cfg.admin_token, {"keep": keep, "older_than": older_than,
                                "dry_run": dry_run, "dir": where}, timeout=None)
        finally:
            node.close()
        base = os.path.realpath(cfg.snapshots_dir)
        result["dir"] = os.path.join(base, result["dir"]) if result["dir"] else base
        emit({**result, "via": "node"})
    else:
        plan = plan_prune(where, keep, seconds)
        bar = progress_bar("snapshot prune", total=plan.bytes, unit="B") if plan.doomed and not dry_run \
            else nullcontext(None)
        with bar as tick:
            result = apply_prune(plan, dry_run=dry_run, on_deleted=tick)
        emit({**result, "older_than": older_than, "via": "local"})
    raise typer.Exit(1 if result["failed"] else 0)


@snapshot_app.command("restore")
def snapshot_restore(ctx: typer.Context,
                     path: str = typer.Argument(..., help="The snapshot directory."),
                     force: bool = typer.Option(False, "--force", help="Replace an existing data dir (moved aside to <data-dir>.replaced-<time>)."),
                     quiet: bool = quiet_option()) -> None:
    """Verify a snapshot and restore it as --data-dir: all or nothing.

    Exit 1 when the snapshot is corrupt, truncated or incomplete, or a node runs on the data dir;
    2 on a usage error (no snapshot there, the data dir is not empty without --force)."""
    from ledgerlog.ops.data.restore import restore_snapshot
    data_dir = ctx.find_root().obj["data_dir"]
    with _snapshot_errors(), progress_bar("restore", unit="B", quiet=quiet) as bar:
        result = restore_snapshot(path, data_dir, force=force, progress=bar)
    emit(result)


@contextmanager
def _snapshot_errors() -> Iterator[None]:
    """A corrupt or locked snapshot exits 1 (CORRUPT, LOCKED); a bad path or target 2 (USAGE)."""
    try:
        yield
    except CorruptStoreError as exc:
        fail(str(exc), 1, code="CORRUPT")
        raise
    except StoreLockedError as exc:
        fail(str(exc), 1, code="LOCKED")
        raise
    except ConfigError as exc:
        fail(str(exc), 2, code="USAGE")
        raise


@snapshot_app.command("verify")
def snapshot_verify(path: str = typer.Argument(..., help="The snapshot directory."),
                    deep: bool = typer.Option(False, "--deep", help="Also open a scratch copy with RocksDB and check "
                                              "its height, tip, offsets and projection digests (costs a copy)."),
                    quiet: bool = quiet_option()) -> None:
    """Check a snapshot: its manifest, and every file's size and sha256 (and with --deep, RocksDB's view).

    Exit 0 when it holds; 1 naming the first bad file; 2 when there is no snapshot at PATH."""
    from ledgerlog.ops.data.restore import deep_check, snapshot_bytes
    from ledgerlog.ops.data.snapshot import reading, summary, verify_snapshot
    if not os.path.isdir(path):
        fail(f"no snapshot at {path}", 2, code="USAGE")
    # reading: snapshot prune leaves it be meanwhile
    with _snapshot_errors(), reading(path), progress_bar("snapshot", unit="B", quiet=quiet) as bar:
        if deep:
            manifest = deep_check(path, bar)
        else:
            if bar is not None:
                bar.set_total(snapshot_bytes(path))
            manifest = verify_snapshot(path, bar)
    emit({**summary(manifest, path), "ok": True, "deep": deep})
