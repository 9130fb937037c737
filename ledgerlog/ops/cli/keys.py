"""Key and signing helpers: make a valid line without writing code."""
from __future__ import annotations

import json
import os
import time

import typer

from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.errors import LedgerError
from ledgerlog.engine.signing import Signer, signed_line
from ledgerlog.ops.cli import app, config_of, emit, fail

keys_app = typer.Typer(help="Ed25519 keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def load_signer(path: str) -> Signer:
    try:
        return Signer.load(path)
    except (OSError, ValueError, KeyError) as exc:
        fail(f"cannot read key file {path}: {exc}", 2)
        raise  # unreachable


@keys_app.command("rotate")
def keys_rotate(ctx: typer.Context, name: str = typer.Argument(..., help="Key file under <data-dir>/keys: producer, oracle, treasury, log, ...")) -> None:
    """Replace a role key (producer, oracle, pool, treasury, log) by a fresh one, recorded on ledger.keys.

    With a node running on the data dir, the node does it (admin API) and its simulator switches keys."""
    from ledgerlog.ops.node.keyrotation import rotate_key
    from ledgerlog.ops.query.client import NodeClient
    cfg = config_of(ctx)
    try:
        node = NodeClient.find(cfg)
        if node is not None:
            try:
                result = {**node.admin("rotate-key", cfg.admin_token, {"key": name}), "via": "node"}
            finally:
                node.close()
        else:
            with open_chain(cfg) as chain:
                result = {**rotate_key(cfg.keys_dir, chain.genesis, chain.write_state(), chain.admitter.admit,
                                       name), "via": "local"}
    except LedgerError as exc:
        fail(str(exc), 1, code="ROTATION_REFUSED")
    emit(result)


@keys_app.command("new")
def keys_new(out: str | None = typer.Option(None, "--out", help="Write the key here (mode 0600).")) -> None:
    """Generate a key; prints seed (secret), pubkey and address."""
    s = Signer.generate()
    doc = {"seed": s.seed, "pubkey": s.pubkey, "address": s.address}
    if out:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.write("\n")
        doc = {"file": out, "pubkey": s.pubkey, "address": s.address}
    emit(doc)


def _pending_nonce(ctx: typer.Context, address: str) -> int:
    """Next nonce for ``address``: confirmed + mempool + 1, from the local chain's write side."""
    try:
        with open_chain(config_of(ctx), read_only=True) as chain:
            st = chain.write_state()
            return st.account(address).nonce + len(st.pending(address)) + 1
    except LedgerError as exc:
        fail(f"--nonce not given and the chain cannot tell it: {exc}", 2)
        raise


def _chain_id(ctx: typer.Context, chain_id: str | None) -> str:
    if chain_id:
        return chain_id
    cfg = config_of(ctx)
    try:
        with open(cfg.genesis_path, encoding="utf-8") as f:
            return json.load(f)["chain_id"]
    except (OSError, ValueError, KeyError):
        fail("--chain-id not given and no genesis in the data dir", 2)
        raise


@app.command("sign-tx")
def sign_tx(ctx: typer.Context,
            key: str = typer.Option(..., "--key", help="Sender key file (from `keys new --out`)."),
            to: str = typer.Option(..., "--to", help="Recipient address."),
            amount: int = typer.Option(..., "--amount", help="Base units."),
            fee: int | None = typer.Option(None, "--fee", help="Default: genesis min_fee."),
            nonce: int | None = typer.Option(None, "--nonce", help="Default: next nonce from the chain."),
            memo: str = typer.Option("", "--memo"),
            chain_id: str | None = typer.Option(None, "--chain-id"),
            timestamp: int | None = typer.Option(None, "--timestamp", help="ms; default now.")) -> None:
    """Print a signed `transaction` ingest line (pipe it to `ledgerlog ingest -`)."""
    signer = load_signer(key)
    if fee is None:
        cfg = config_of(ctx)
        try:
            with open(cfg.genesis_path, encoding="utf-8") as f:
                fee = int(json.load(f)["min_fee"])
        except (OSError, ValueError, KeyError):
            fail("--fee not given and no genesis in the data dir", 2)
    body = {"chain_id": _chain_id(ctx, chain_id), "sender": signer.address, "recipient": to,
            "amount": amount, "fee": fee, "nonce": nonce if nonce is not None else _pending_nonce(ctx, signer.address),
            "timestamp": timestamp if timestamp is not None else int(time.time() * 1000), "memo": memo}
    try:
        emit(signed_line("transaction", signer, body))
    except OverflowError:
        fail("--amount, --fee, --nonce and --timestamp must be between 0 and 2^63-1", 2)


@app.command("sign")
def sign(ctx: typer.Context,
         kind: str = typer.Argument(..., help="transaction, reading, provider, settlement, payout or governance "
                                              "(a treasury-signed parameter change: docs/PROTOCOL.md §8.5)."),
         key: str = typer.Option(..., "--key", help="Signer key file."),
         body: str = typer.Option(..., "--body", help="The body as JSON; chain_id and timestamp are filled if absent.")) -> None:
    """Sign any body kind and print its ingest line."""
    if kind not in ("transaction", "reading", "provider", "settlement", "payout", "governance"):
        fail(f"unknown kind {kind!r}", 2)
    try:
        doc = json.loads(body)
    except ValueError as exc:
        fail(f"--body is not JSON: {exc}", 2)
        raise
    if not isinstance(doc, dict):
        fail("--body must be a JSON object (the body's fields)", 2)
    doc.setdefault("chain_id", _chain_id(ctx, None))
    doc.setdefault("timestamp", int(time.time() * 1000))
    try:
        emit(signed_line(kind, load_signer(key), doc))
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # OverflowError: an integer past 64 bits
        fail(f"body does not fit the {kind} schema: {exc}", 2)
