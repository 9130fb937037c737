"""`ledgerlog proof ...`: proofs an auditor checks without trusting the node (PROTOCOL.md §9)."""
from __future__ import annotations

import typer

from ledgerlog.ops.cli import app, config_of, emit
from ledgerlog.ops.query.client import open_queries

proof_app = typer.Typer(help="Proofs an auditor checks without trusting the node.", no_args_is_help=True)
app.add_typer(proof_app, name="proof")


@proof_app.command("tx")
def proof_tx(ctx: typer.Context, txid: str) -> None:
    """That a confirmed transaction is in its block: {txid, height, block_hash, tx_root, index,
    branch}; hashing up the branch from the txid gives the header's tx_root (PROTOCOL.md §2)."""
    with open_queries(config_of(ctx)) as q:
        emit(q.tx_proof(txid))
