"""`ledgerlog proof ...`: proofs an auditor checks without trusting the node (PROTOCOL.md §9).

Each command asks the running node when there is one, else reads the data dir (read-only; the
log proofs need no projection, so they fold nothing first); the answers are the node's HTTP
answers, and arguments beyond the log are 400 ``BAD_REQUEST`` (exit 2)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.cli import app, config_of, emit
from ledgerlog.ops.query.client import NodeClient, open_queries
from ledgerlog.ops.query.proofs import LogProofs

proof_app = typer.Typer(help="Proofs an auditor checks without trusting the node.", no_args_is_help=True)
app.add_typer(proof_app, name="proof")

_TOPIC = typer.Option(..., "--topic", help="An event topic, e.g. ledger.blocks (not _schemas or _checkpoints).")
_PARTITION = typer.Option(..., "--partition", help="The partition of the topic.")


@proof_app.command("tx")
def proof_tx(ctx: typer.Context, txid: str) -> None:
    """That a confirmed transaction is in its block: {txid, height, block_hash, tx_root, index,
    branch}; hashing up the branch from the txid gives the header's tx_root (PROTOCOL.md §2)."""
    with open_queries(config_of(ctx)) as q:
        emit(q.tx_proof(txid))


@contextmanager
def _log_proofs(config: Config) -> Iterator[Any]:
    """The running node, else the data dir's log opened read-only."""
    remote = NodeClient.find(config)
    if remote is not None:
        yield remote
        return
    with open_chain(config, read_only=True) as chain:
        yield LogProofs(chain.log, chain.heads)


@proof_app.command("inclusion")
def proof_inclusion(ctx: typer.Context, topic: str = _TOPIC, partition: int = _PARTITION,
                    index: int | None = typer.Option(None, "--index", help="The leaf (the index-th record)."),
                    offset: int | None = typer.Option(None, "--offset", help="Or the record at this offset."),
                    tree_size: int | None = typer.Option(None, "--tree-size",
                                                         help="In the tree of this many leaves (default: all).")) -> None:
    """RFC 6962 inclusion proof of one record: {topic, partition, index, offset, tree_size,
    leaf_hash, audit_path}; check it against the root of a signed head of tree_size leaves."""
    with _log_proofs(config_of(ctx)) as q:
        emit(q.inclusion_proof(topic, partition, index, offset, tree_size))


@proof_app.command("consistency")
def proof_consistency(ctx: typer.Context, topic: str = _TOPIC, partition: int = _PARTITION,
                      first: int = typer.Option(..., "--first", help="Leaves of the older tree (1..second)."),
                      second: int | None = typer.Option(None, "--second",
                                                        help="Leaves of the newer tree (default: all).")) -> None:
    """RFC 6962 consistency proof: {topic, partition, first, second, proof}; that the tree of
    first leaves is a prefix of the tree of second leaves (nothing below it was rewritten)."""
    with _log_proofs(config_of(ctx)) as q:
        emit(q.consistency_proof(topic, partition, first, second))


@proof_app.command("head")
def proof_head(ctx: typer.Context, topic: str = _TOPIC, partition: int = _PARTITION) -> None:
    """The newest signed tree head of a partition on _checkpoints: {head: {chain_id, topic,
    partition, tree_size, root_hash, timestamp}, pubkey, signature}."""
    with _log_proofs(config_of(ctx)) as q:
        emit(q.tree_head(topic, partition))
