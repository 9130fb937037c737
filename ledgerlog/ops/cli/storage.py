"""Storage commands: `ledgerlog stats` (what the data dir holds) and `ledgerlog compact` (RocksDB
manual compaction; through the node's admin API, action ``compact``, while a node runs); the work
is ops/data/storage.py's."""
from __future__ import annotations

import typer

from ledgerlog.ops.cli import app, config_of, emit, fail
from ledgerlog.ops.data.storage import compact_offline, storage_stats
from ledgerlog.ops.query.client import NodeClient

__all__ = ["compact", "stats"]


@app.command()
def stats(ctx: typer.Context,
          exact: bool = typer.Option(False, "--exact", help="Also count keys and bytes per topic and "
                                     "projection by reading every key (slow on large stores).")) -> None:
    """Storage statistics: bytes on disk, records per topic, keys, height and lag per projection.

    Opens the stores read-only, so it also works while a node runs."""
    cfg = config_of(ctx)
    node = NodeClient.find(cfg)
    if node is not None:
        node.close()
    emit(storage_stats(cfg, exact=exact, node_running=node is not None))


@app.command()
def compact(ctx: typer.Context) -> None:
    """Compact the RocksDB stores (log and projections) to reclaim space and speed up reads.

    With a node running on the data dir, the node does it (admin API, action `compact`) and keeps
    serving; without admin.token set that is refused."""
    cfg = config_of(ctx)
    node = NodeClient.find(cfg)
    if node is not None:
        try:
            if not cfg.admin_token:
                fail(f"a node is running on {cfg.data_dir} ({node.url}); stop it first, or set admin.token "
                     "(LEDGERLOG_ADMIN_TOKEN) so compaction runs through the node", 1, code="NODE_RUNNING")
            emit(node.admin("compact", cfg.admin_token, {}, timeout=None))
        finally:
            node.close()
        return
    emit(compact_offline(cfg))
