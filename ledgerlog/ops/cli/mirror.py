"""`ledgerlog mirror`: copy the embedded log into Kafka, verify it, optionally switch over (ops.mirror)."""
from __future__ import annotations

import typer

from ledgerlog.engine.errors import StoreLockedError
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.ops.cli import app, config_of, emit, fail
from ledgerlog.ops.cli.progress import progress_bar, quiet_option
from ledgerlog.ops.data.mirror import DEFAULT_BATCH, open_target, switch_to_kafka
from ledgerlog.ops.data.mirror import mirror as run_mirror


@app.command()
def mirror(ctx: typer.Context,
           to: str = typer.Option(..., "--to", help="Target: kafka://HOST:PORT[,HOST:PORT]."),
           topic_prefix: str | None = typer.Option(None, "--topic-prefix",
                                                      help="Prefix of the target topics (default: [kafka] ledgerlog.topic_prefix, else none)."),
           batch: int = typer.Option(DEFAULT_BATCH, "--batch", min=1, help="Records per broker transaction."),
           switch: bool = typer.Option(False, "--switch",
                                       help="After a verified mirror, point config.toml at Kafka (the node must be stopped)."),
           max_records: int | None = typer.Option(None, "--max-records", min=1, hidden=True,
                                                     help="Copy at most this many records, then stop (no verification)."),
           quiet: bool = quiet_option(),
           ) -> None:
    """Mirror the embedded log into Kafka topics (same partitions, keys, order, timestamps and
    value bytes, `_schemas` first), resuming from what the target holds; then compare record
    counts and hashes per partition. Prints a JSON report; exit 1 on a mismatch.

    Works beside a running node (the log is opened as a secondary; what was appended before the
    start is mirrored). With --switch the node must be stopped: the mirror is then exact, the
    write-side state is rebuilt from Kafka into <data-dir>/state and compared, projections are
    moved aside (they rebuild from Kafka) and config.toml's log.url / [kafka] prefix rewritten."""
    cfg = config_of(ctx)
    if cfg.log_url != "embedded":
        fail(f"{cfg.data_dir} is not on the embedded log (log.url = {cfg.log_url}); nothing to mirror", 2)
    prefix = topic_prefix if topic_prefix is not None else cfg.kafka.get("ledgerlog.topic_prefix", "")
    genesis = Genesis.load(cfg.genesis_path)
    try:
        source = EmbeddedLog(cfg.log_path, read_only=False, sync=cfg.sync) if switch else \
            EmbeddedLog(cfg.log_path, secondary=True)
    except StoreLockedError as exc:
        fail(f"--switch needs the node stopped: {exc}", 1, code="LOCKED")
        raise
    with source:
        target = open_target(cfg, to, prefix, genesis.hash)
        with target:
            with progress_bar(f"mirror -> {to}", quiet=quiet) as tick:
                rep = run_mirror(source, target, to=to, prefix=prefix, batch=batch, max_records=max_records,
                                 progress=tick)
            out = rep.to_dict()
            if switch:
                if not (rep.ok and rep.complete):
                    out["switched"] = False
                else:
                    out.update(switch_to_kafka(cfg, source, rep, to, prefix))
    emit(out)
    raise typer.Exit(0 if rep.ok or (max_records is not None and not rep.complete) else 1)
