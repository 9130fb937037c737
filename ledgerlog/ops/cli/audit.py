"""`ledgerlog audit` (PROTOCOL.md §9): check the log's records against its signed tree heads,
trusting only a pinned log key (ops/verify/audit.py)."""
from __future__ import annotations

import re
from typing import Any

import typer

from ledgerlog.engine.errors import UsageError, storage_error
from ledgerlog.ops.cli import app, config_of, emit
from ledgerlog.ops.cli.progress import progress_bar, quiet_option

_PUBKEY = re.compile(r"[0-9a-fA-F]{64}")


@app.command("audit")
def audit_command(ctx: typer.Context,
                  log_pubkey: str = typer.Option(..., "--log-pubkey",
                                                 help="The log key pinned out of band (`status` log_pubkey), hex."),
                  state: str | None = typer.Option(None, "--state",
                                                   help="Heads remembered from earlier audits: checked, then updated when everything holds."),
                  kafka: str | None = typer.Option(None, "--kafka", help="Audit a Kafka cluster's log: HOST:PORT[,...]."),
                  topic_prefix: str = typer.Option("", "--topic-prefix",
                                                   help="With --kafka: the chain's topic prefix (its ledgerlog.topic_prefix)."),
                  records: str | None = typer.Option(None, "--records",
                                                     help="Audit JSON lines as `tail --raw` prints them (all topics, _checkpoints included), or - for stdin."),
                  metrics_file: str | None = typer.Option(None, "--metrics-file",
                                                          help="Also write the outcome as Prometheus text there (node_exporter's textfile collector)."),
                  archive: list[str] | None = typer.Option(None, "--archive",
                                                           help="A pruned log's archive (h<H>/), or a directory of them (repeatable): "
                                                                "its records are replayed below the log's start."),
                  quiet: bool = quiet_option()) -> None:
    """Recompute every partition's Merkle tree and check every signed tree head against it; prints
    a JSON report. Exit 0 when everything holds, 1 naming the first topic, partition and index
    where records and heads disagree, 2 on a usage or input error.

    Reads the data dir's log unless --kafka or --records is given. Heads count when signed by the
    pinned key or a key reached from it by log-key rotations on ledger.keys.

    A pruned log: with --archive the archived records are checked first, like any other; without,
    the pruned prefix counts by the leaf hashes the log stored when it pruned, reported as
    pruned.not_audited (never as verified)."""
    from ledgerlog.engine.log import KafkaConfig, open_log
    from ledgerlog.ops.data.archive import archive_dirs
    from ledgerlog.ops.verify.audit_io import LogSource, RecordsSource, run_audit

    if not _PUBKEY.fullmatch(log_pubkey):
        raise UsageError(f"--log-pubkey must be an Ed25519 public key, 64 hex digits, not {log_pubkey[:80]!r}")
    if kafka is not None and records is not None:
        raise UsageError("give --kafka or --records, not both")
    if topic_prefix and kafka is None:
        raise UsageError("--topic-prefix goes with --kafka")
    source: LogSource | RecordsSource
    archives = [d for a in archive or [] for d in archive_dirs(a)]
    if archives and records is not None:
        raise UsageError("--archive goes with a log (the data dir's or --kafka), not --records")
    if records is not None:
        source = RecordsSource(records)
    elif kafka is not None:
        conn = KafkaConfig.from_table(kafka, {"ledgerlog.topic_prefix": topic_prefix})
        source = LogSource(open_log(f"kafka://{kafka}", read_only=True, kafka=conn), f"kafka://{kafka}/{topic_prefix}",
                           archives)
    else:
        cfg = config_of(ctx)
        source = LogSource(open_log(cfg.resolved_log_url, read_only=True, kafka=cfg.kafka_connection()), cfg.data_dir,
                           archives)
    try:
        report = run_audit(source, log_pubkey.lower(), state,
                           lambda total: progress_bar("audit", total=total, unit=" records", quiet=quiet))
    finally:
        source.close()
    if metrics_file:
        write_metrics(metrics_file, report)
    emit(report)
    raise typer.Exit(0 if report["ok"] else 1)


def write_metrics(path: str, report: dict[str, Any]) -> None:
    """The audit's outcome for Prometheus (alert LedgerlogAuditFailed), written atomically as the
    textfile collector needs: ledgerlog_audit_failed, _records and _last_run_timestamp_seconds."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    reg = CollectorRegistry()
    Gauge("ledgerlog_audit_failed", "1 when the last audit found a record or head that does not hold, else 0",
          registry=reg).set(0 if report["ok"] else 1)
    Gauge("ledgerlog_audit_records", "Records the last audit checked", registry=reg).set(report.get("records", 0))
    Gauge("ledgerlog_audit_last_run_timestamp_seconds", "When the last audit finished, seconds since the epoch",
          registry=reg).set_to_current_time()
    try:
        write_to_textfile(path, reg)
    except OSError as exc:
        raise storage_error(exc, f"cannot write the metrics file {path}") from exc
