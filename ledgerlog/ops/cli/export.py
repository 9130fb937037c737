"""`ledgerlog export`: a topic's events, in one range, to an Avro or JSONL file (ops.export)."""
from __future__ import annotations

import os

import typer

from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.errors import storage_error
from ledgerlog.ops.cli import app, config_of, emit, fail, real_paths
from ledgerlog.ops.cli.progress import progress_bar, quiet_option
from ledgerlog.ops.data.export import FORMATS
from ledgerlog.ops.data.export import export as export_events

_EXT = {".avro": "avro", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@app.command()
def export(ctx: typer.Context,
           topic: str = typer.Option(..., "--topic", help="Event topic, e.g. ledger.transactions."),
           out: str = typer.Option(..., "--out", help="Output file (written via a temp file and a rename)."),
           fmt: str | None = typer.Option(None, "--format", help="avro or jsonl (default: from --out's extension)."),
           from_height: int | None = typer.Option(None, "--from-height", help="First event height (inclusive)."),
           to_height: int | None = typer.Option(None, "--to-height", help="Last event height (inclusive)."),
           from_offset: int | None = typer.Option(None, "--from-offset", help="First offset, per partition (inclusive)."),
           to_offset: int | None = typer.Option(None, "--to-offset", help="Last offset, per partition (inclusive)."),
           from_time: str | None = typer.Option(None, "--from-time", help="First record time: ms since the epoch or ISO 8601 (UTC if no zone)."),
           to_time: str | None = typer.Option(None, "--to-time", help="Last record time (inclusive)."),
           partition: list[int] | None = typer.Option(None, "--partition", help="Only this partition (repeatable)."),
           quiet: bool = quiet_option()) -> None:
    """Export a topic's events to a file; prints {"topic","format","records","path","bytes",...}.

    One range kind at a time (heights, offsets or times; none = the whole topic), inclusive,
    either end optional. Records come by partition, then offset. Works beside a running node
    (the log is opened read-only; what was appended before the start is exported). Exit 2 on a
    usage error (unknown topic, mixed range kinds, ...)."""
    if out == "-":  # elsewhere "-" is standard output; an export is a file, written whole or not at all
        fail("export writes a file (--out PATH); to stream a topic's records to standard output, use "
             "`ledgerlog tail TOPIC`", 2)
    if fmt is None:
        fmt = _EXT.get(os.path.splitext(out)[1].lower())
        if fmt is None:
            fail(f"give --format ({'|'.join(FORMATS)}); it cannot be told from {out!r}", 2)
    if fmt not in FORMATS:
        fail(f"unknown --format {fmt!r}; one of {list(FORMATS)}", 2)
    assert fmt is not None
    cfg = config_of(ctx)
    with open_chain(cfg, read_only=True) as chain, progress_bar(f"export {topic}", quiet=quiet) as bar:
        try:
            summary = export_events(chain, topic, fmt, out, from_height=from_height, to_height=to_height,
                                    from_offset=from_offset, to_offset=to_offset, from_time=from_time,
                                    to_time=to_time, partitions=partition or None, progress=bar)
        except OSError as exc:  # an ExportError goes up as it is (BAD_EXPORT, exit 2)
            raise storage_error(exc, f"cannot write {out}") from exc
    emit(real_paths(summary))
