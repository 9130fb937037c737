"""Chain commands: init, ingest, status, tail."""
from __future__ import annotations

import json
import sys
import time
from typing import Optional

import typer

from engine.chain import init_chain, open_chain
from engine.errors import LedgerError, StoreLockedError

from .cli import app, config_of, emit, fail
from .lines import numbered_lines


@app.command()
def init(ctx: typer.Context,
         genesis: Optional[str] = typer.Option(None, "--genesis", help="Genesis JSON; default: a new dev chain with keys under <data-dir>/keys."),
         log: Optional[str] = typer.Option(None, "--log", help="Log backend: embedded (default) or kafka://HOST:PORT[,...]."),
         partitions: Optional[int] = typer.Option(None, "--partitions", help="Partitions per keyed topic (default 4).")) -> None:
    """Create a chain in the data dir (idempotent for the same genesis)."""
    cfg = config_of(ctx, log_url=log, partitions=partitions)
    doc = None
    if genesis:
        try:
            with open(genesis, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            fail(f"cannot read {genesis}: {exc}", 2)
    g = init_chain(cfg, doc)
    emit({"chain_id": g.chain_id, "genesis_hash": g.hash, "data_dir": cfg.data_dir,
          "log": cfg.log_url, "keys": cfg.keys_dir if doc is None else None})


@app.command()
def ingest(ctx: typer.Context, file: str = typer.Argument(..., help="JSONL file of ingest lines, or - for stdin.")) -> None:
    """Admit ingest lines; prints {"accepted","duplicates","rejected","rejections"}.

    Exit 0 when nothing was rejected, 1 when something was, 2 on a usage or I/O error."""
    cfg = config_of(ctx)
    try:
        stream = sys.stdin.buffer if file == "-" else open(file, "rb")
    except OSError as exc:
        fail(f"cannot open {file}: {exc}", 2)
        raise
    with stream:
        try:
            chain = open_chain(cfg)
        except StoreLockedError:
            from .nodeclient import NodeClient
            summary = NodeClient.for_data_dir(cfg).ingest(stream)
        else:
            with chain:
                bar = _progress(file)
                try:
                    summary = chain.admitter.admit_numbered(
                        numbered_lines(stream), progress=bar.update if bar else None).to_dict()
                except OSError as exc:
                    fail(f"I/O error while ingesting {file}: {exc}", 2)
                    raise
                finally:
                    if bar:
                        bar.close()
    emit(summary)
    raise typer.Exit(1 if summary["rejected"] else 0)


def _progress(file: str):  # noqa: ANN202
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(desc=f"ingest {file}", unit=" lines", unit_scale=True, file=sys.stderr)


@app.command()
def status(ctx: typer.Context) -> None:
    """Chain id, height, tip hash (and provenance)."""
    from .queries import open_queries
    with open_queries(config_of(ctx)) as q:
        emit(q.status())


@app.command()
def tail(ctx: typer.Context,
         topic: str = typer.Argument(..., help="Topic name, e.g. ledger.transactions."),
         from_offset: int = typer.Option(0, "--from-offset", help="First offset (negative: from the end)."),
         partition: Optional[int] = typer.Option(None, "--partition", help="Only this partition."),
         limit: Optional[int] = typer.Option(None, "--limit", help="Stop after this many records."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new records.")) -> None:
    """Print records as JSON lines: topic, partition, offset, key, timestamp, schema_id, value."""
    cfg = config_of(ctx)
    printed = 0
    positions: dict[int, int] = {}
    while True:
        try:
            chain = open_chain(cfg, read_only=True)
        except LedgerError as exc:
            fail(str(exc), 1)
            raise
        with chain:
            if topic not in chain.log.topics():
                fail(f"unknown topic {topic!r}; topics: {sorted(chain.log.topics())}", 2)
            ends = chain.log.end_offsets(topic)
            parts = [partition] if partition is not None else range(len(ends))
            for p in parts:
                if p not in range(len(ends)):
                    fail(f"{topic} has no partition {p}", 2)
                start = positions.get(p, from_offset if from_offset >= 0 else max(0, ends[p] + from_offset))
                for rec in chain.log.scan(topic, p, start):
                    value = chain.codec.decode(topic, rec.value) if not topic.startswith("_") else json.loads(rec.value)
                    emit({"topic": topic, "partition": p, "offset": rec.offset, "key": rec.key.decode(errors="replace"),
                          "timestamp": rec.timestamp, "schema_id": int.from_bytes(rec.value[1:5], "big") if not topic.startswith("_") else None,
                          "value": value})
                    positions[p] = rec.offset + 1
                    printed += 1
                    if limit is not None and printed >= limit:
                        return
                positions.setdefault(p, start)
        if not follow:
            return
        time.sleep(0.5)
