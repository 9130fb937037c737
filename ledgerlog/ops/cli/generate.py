"""`ledgerlog generate`: a deterministic, valid history (and its genesis) for trials and benchmarks."""
from __future__ import annotations

import typer

from ledgerlog.ops.cli import app, emit, fail
from ledgerlog.ops.cli.progress import progress_bar, quiet_option
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history


@app.command()
def generate(events: int = typer.Option(10_000, "--events", help="Roughly how many events end up on the log."),
             seed: int = typer.Option(1, "--seed", help="Same seed, same bytes."),
             wallets: int = typer.Option(32, "--wallets"),
             invalid_every: int = typer.Option(0, "--invalid-every", help="Make every Nth line invalid (0: none)."),
             out: str = typer.Option(..., "--out", help="JSONL file of ingest lines (- for stdout)."),
             genesis_out: str | None = typer.Option(None, "--genesis-out", help="Where to write its genesis."),
             quiet: bool = quiet_option()) -> None:
    """Write a generated history: blocks of signed transfers, mempool txs, shares (some late),
    providers, readings, settlements and pool payouts. `init --genesis` it, then `ingest` it."""
    if events < 1 or wallets < 2 or invalid_every < 0:
        fail("--events >= 1, --wallets >= 2, --invalid-every >= 0", 2)
    genesis, keys = make_genesis(seed, wallets=wallets)
    if genesis_out:
        write_genesis(genesis_out, genesis)
    import sys
    target = sys.stdout.buffer if out == "-" else out
    with progress_bar("generate", total=events, unit=" events", quiet=quiet) as bar:
        stats = write_history(target, genesis, keys, events=events, seed=seed, invalid_every=invalid_every,
                              progress=bar)
    if out != "-":
        emit({"out": out, "genesis": genesis_out, **stats.to_dict()})
