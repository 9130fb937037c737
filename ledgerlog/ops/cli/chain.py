"""Chain commands: init, ingest, status, tail."""
from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

import typer

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.errors import LedgerError, StoreLockedError
from ledgerlog.engine.treehead import load_log_key
from ledgerlog.ops.cli import app, config_of, emit, fail
from ledgerlog.ops.cli.progress import progress_bar, quiet_option
from ledgerlog.ops.data.lines import numbered_lines


@app.command()
def init(ctx: typer.Context,
         genesis: str | None = typer.Option(None, "--genesis", help="Genesis JSON; default: a new dev chain with keys under <data-dir>/keys."),
         log: str | None = typer.Option(None, "--log", help="Log backend: embedded (default) or kafka://HOST:PORT[,...]."),
         partitions: int | None = typer.Option(None, "--partitions", help="Partitions per keyed topic (default 4).")) -> None:
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
    log_key = load_log_key(cfg.keys_dir, create=False)
    emit({"chain_id": g.chain_id, "genesis_hash": g.hash, "data_dir": cfg.data_dir,
          "log": cfg.log_url, "keys": cfg.keys_dir if doc is None else None,
          "log_pubkey": log_key.pubkey if log_key else None})


@app.command()
def ingest(ctx: typer.Context, file: str = typer.Argument(..., help="JSONL file of ingest lines, or - for stdin."),
           ids: bool = typer.Option(False, "--ids", help='Also list each admitted line\'s id: "ids": [{"line","kind","id"}].'),
           quiet: bool = quiet_option()) -> None:
    """Admit ingest lines; prints {"accepted","duplicates","rejected","rejections"} (and "ids").

    Exit 0 when nothing was rejected, 1 when something was, 2 on a usage or I/O error."""
    cfg = config_of(ctx)
    try:
        stream = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115 - closed after the ingest
    except OSError as exc:
        fail(f"cannot open {file}: {exc}", 2)
        raise
    size = _size(stream)  # a file's bytes are a known total; a pipe's lines are not
    bar = progress_bar(f"ingest {os.path.basename(file)}", total=size, unit=" lines" if size is None else "B",
                       quiet=quiet)
    with stream:
        try:
            chain = open_chain(cfg)
        except StoreLockedError:  # a node runs on the data dir: through it
            from ledgerlog.ops.query.client import NodeClient
            node = NodeClient.for_data_dir(cfg)
            with bar as tick:
                summary = node.ingest(stream, ids, progress=tick if size is None else _by_position(stream, tick))
        else:
            with chain, bar as tick:
                try:
                    summary = chain.admitter.admit_numbered(
                        numbered_lines(stream), progress=tick if size is None else _by_position(stream, tick),
                        ids=ids).to_dict()
                except OSError as exc:
                    fail(f"I/O error while ingesting {file}: {exc}", 2)
                    raise
                except LedgerError as exc:
                    where = getattr(exc, "admitted_before", None)
                    if where is None:
                        raise
                    line, done = where
                    exc.args = (f"{exc}; the lines before line {line} were admitted ({done['accepted']} accepted, "
                                f"{done['duplicates']} duplicates, {done['rejected']} rejected): once fixed, run the "
                                "same ingest again (what was admitted comes back as duplicates)",)
                    raise
    emit(summary)
    raise typer.Exit(1 if summary["rejected"] else 0)


def _size(stream: Any) -> int | None:
    """Bytes in ``stream`` when it is a regular file (a progress total), else None."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _by_position(stream: Any, tick: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """Turn the admitter's "n more lines" into "the file position moved by k bytes"."""
    if tick is None:
        return None
    done = [stream.tell()]

    def advance(_lines: int) -> None:
        now = stream.tell()
        tick(now - done[0])
        done[0] = now
    return advance


@app.command()
def status(ctx: typer.Context) -> None:
    """Chain id, height, tip hash (and provenance)."""
    from ledgerlog.ops.query.client import open_queries
    with open_queries(config_of(ctx)) as q:
        emit(q.status())


@app.command()
def tail(ctx: typer.Context,
         topic: str = typer.Argument(..., help="Topic name, e.g. ledger.transactions."),
         from_offset: int | None = typer.Option(None, "--from-offset", help="First offset (negative: from the end; "
                                                "default: the first the log holds, past any prune)."),
         partition: int | None = typer.Option(None, "--partition", help="Only this partition."),
         limit: int | None = typer.Option(None, "--limit", help="Stop after this many records."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new records."),
         poll_interval: float = typer.Option(0.5, "--poll-interval", min=0.01, max=60.0,
                                             help="With --follow: longest wait between looks at the log, seconds."),
         raw: bool = typer.Option(False, "--raw", help="The exact stored bytes, as hex (what an auditor hashes).")) -> None:
    """Print records as JSON lines: topic, partition, offset, key, timestamp, schema_id, value;
    with --raw: topic, partition, offset, timestamp, key_hex, value_hex (PROTOCOL.md §9).

    With --follow, keep printing records as a running node or an ingest in another process
    appends them (per partition, in offset order) until --limit records were printed or
    SIGINT/SIGTERM, which exit 0. Idle, the log is looked at least every --poll-interval."""
    cfg = config_of(ctx)
    state = _TailStop()
    previous = state.install() if follow else None
    source: Any
    try:
        if follow:
            from ledgerlog.ops.data.export import open_follower
            source = open_follower(cfg)
        else:
            source = open_chain(cfg, read_only=True)
        with source:
            log = source.log
            if topic not in log.topics():
                fail(f"unknown topic {topic!r}; topics: {sorted(log.topics())}", 2)
            ends = log.end_offsets(topic)
            parts = [partition] if partition is not None else list(range(len(ends)))
            for p in parts:
                if p not in range(len(ends)):
                    fail(f"{topic} has no partition {p}", 2)
            starts = log.start_offsets(topic)  # below a pruned log's start: PRUNED, naming it
            positions = {p: starts[p] if from_offset is None else from_offset if from_offset >= 0
                         else max(starts[p], ends[p] + from_offset) for p in parts}
            printed = 0
            if limit is not None and limit <= 0:
                return
            delay = _TAIL_MIN_WAIT
            while True:
                new = 0
                ends = source.log.end_offsets(topic)
                for p in parts:
                    while positions[p] < ends[p] and not state.stop:
                        chunk = source.log.read(topic, p, positions[p], min(500, ends[p] - positions[p]))
                        if not chunk:
                            break
                        for rec in chunk:
                            if rec.offset >= ends[p]:
                                break
                            emit(_raw_json(topic, rec) if raw else _tail_json(source.codec, topic, rec))
                            positions[p] = rec.offset + 1
                            printed += 1
                            new += 1
                            if limit is not None and printed >= limit:
                                return
                            if state.stop:
                                break
                if not follow or state.stop:
                    return
                delay = _TAIL_MIN_WAIT if new else min(delay * 2, poll_interval)
                state.sleep(min(delay, poll_interval))
                source.refresh()
    except _TailStopped:
        return
    except BrokenPipeError:  # the reader went away (`| head`): done, quietly
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return
    finally:
        if previous is not None:
            state.restore(previous)


_TAIL_MIN_WAIT = 0.02


def _raw_json(topic: str, rec: Any) -> dict[str, Any]:
    """A record as stored: the key and value bytes exactly (the value in the Confluent wire format)."""
    return {"topic": topic, "partition": rec.partition, "offset": rec.offset, "timestamp": rec.timestamp,
            "key_hex": rec.key.hex(), "value_hex": rec.value.hex()}


class _TailStopped(Exception):
    pass


class _TailStop:
    """SIGINT/SIGTERM while following: stop after the record being printed (never in the middle
    of a line); while waiting for new records, stop at once."""

    def __init__(self) -> None:
        self.stop = False
        self.sleeping = False

    def install(self) -> dict[int, Any]:
        import signal
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def restore(self, previous: dict[int, Any]) -> None:
        import signal
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop = True
        if self.sleeping:
            raise _TailStopped()

    def sleep(self, seconds: float) -> None:
        self.sleeping = True
        try:
            if not self.stop:
                time.sleep(seconds)
        finally:
            self.sleeping = False
        if self.stop:
            raise _TailStopped()


def _tail_json(codec: Any, topic: str, rec: Any) -> dict[str, Any]:
    internal = topic.startswith("_") and topic != T.CHECKPOINTS  # _schemas, _genesis: JSON values
    return {"topic": topic, "partition": rec.partition, "offset": rec.offset,
            "key": rec.key.decode(errors="replace"), "timestamp": rec.timestamp,
            "schema_id": None if internal else int.from_bytes(rec.value[1:5], "big"),
            "value": json.loads(rec.value) if internal else codec.decode(topic, rec.value)}
