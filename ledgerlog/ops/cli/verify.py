"""`ledgerlog verify`: re-check every event on the log, the supply invariant, each projection
against a fresh replay, and the stores' files and checksums (ops/verify.py)."""
from __future__ import annotations

import typer

from ledgerlog.ops.cli import app, config_of, emit
from ledgerlog.ops.cli.progress import progress_bar, quiet_option


@app.command("verify")
def verify_command(ctx: typer.Context,
                   skip_signatures: bool = typer.Option(False, "--skip-signatures",
                                                        help="Do not verify Ed25519 signatures (ids, hashes and links are still checked)."),
                   scratch_dir: str | None = typer.Option(None, "--scratch-dir",
                                                             help="Where the fresh replay is built (default: the system temp dir); removed afterwards."),
                   quiet: bool = quiet_option()) -> None:
    """Verify the data dir; prints a JSON report. Exit 0 when everything holds, 1 on any failure.

    Checks storage (every store opens, its files are whole, every key reads with checksums verified), the log (offsets, decoding, signatures, ids, hash links, tx roots, uniqueness), supply (the invariant; write side equals a fresh replay) and projections (live digests equal a fresh replay's). With no node running it first brings the live projections to the end of the log; with a node running it opens everything read-only."""
    from ledgerlog.ops.verify.checks import verify
    cfg = config_of(ctx)
    with progress_bar("verify", quiet=quiet) as bar:
        report = verify(cfg, signatures=not skip_signatures, scratch_dir=scratch_dir, progress=bar)
    emit(report)
    raise typer.Exit(0 if report["ok"] else 1)
