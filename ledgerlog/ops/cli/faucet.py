"""`ledgerlog faucet import-key` and `rotate-key`: the faucet's key, supplied by the operator or
replaced by a fresh one that takes its balance (ops/api/faucet_keys.py). With a node running on
the data dir the node does it (admin ``faucet-import-key``/``faucet-rotate-key``, recorded on
ledger.admin with the seed redacted) and its faucet signs with the new key from the next grant on."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import typer

from ledgerlog.engine.admission.admitter import Admitter
from ledgerlog.engine.chain import Chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import UsageError
from ledgerlog.engine.genesis import Genesis
from ledgerlog.ops.api import faucet_keys
from ledgerlog.ops.cli import app, config_of, emit

faucet_app = typer.Typer(help="The faucet's key: import an operator's key, or rotate to a fresh one.",
                         no_args_is_help=True)
app.add_typer(faucet_app, name="faucet")


def key_path(cfg: Config) -> str:
    """The faucet's key file: ``faucet.key`` of the config, else ``<data_dir>/keys/faucet.key``."""
    return cfg.faucet_key or os.path.join(cfg.keys_dir, "faucet.key")


@dataclass
class _LocalChain:
    """The chain opened by this command, as the faucet's key functions take a node's."""

    config: Config
    chain: Chain

    @property
    def genesis(self) -> Genesis:
        return self.chain.genesis

    @property
    def admitter(self) -> Admitter:
        return self.chain.admitter


def _read_key(file: str | None, seed_hex: str | None) -> Any:
    if (file is None) == (seed_hex is None):
        raise UsageError("give a key FILE (- for standard input) or --seed-hex - (the seed on standard input)")
    if seed_hex is not None:
        if seed_hex != "-":
            raise UsageError("--seed-hex takes - and reads the seed from standard input (a seed on the command "
                             "line shows in ps and in shell history)")
        return faucet_keys.signer_of_seed(sys.stdin.read())
    if file == "-":
        return faucet_keys.parse_key(sys.stdin.read())
    try:
        with open(str(file), encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read key file {file}: {exc}") from None
    return faucet_keys.parse_key(text)


@faucet_app.command("import-key")
def import_key(ctx: typer.Context,
               file: str | None = typer.Argument(None, help="A key file as `ledgerlog keys new --out` writes it; "
                                                            "- reads it from standard input."),
               seed_hex: str | None = typer.Option(None, "--seed-hex",
                                                   help="- : read the seed (64 hex digits) from standard input.")) -> None:
    """Install a key as the faucet key (0600, atomically; the old file kept under keys/retired/).

    A malformed key is refused (BAD_KEY) and changes nothing."""
    from ledgerlog.ops.query.client import NodeClient
    signer = _read_key(file, seed_hex)
    cfg = config_of(ctx)
    node = NodeClient.find(cfg)
    if node is not None:
        try:
            result = {**node.admin("faucet-import-key", cfg.admin_token, {"seed": signer.seed}), "via": "node"}
        finally:
            node.close()
    else:
        with open_chain(cfg, read_only=True) as chain:  # an interrupted rotation is settled first
            state = chain.write_state()
            result = {**faucet_keys.install(key_path(cfg), signer, state),
                      "spendable": state.spendable(signer.address), "via": "local"}
    emit(result)


@faucet_app.command("rotate-key")
def rotate_key(ctx: typer.Context) -> None:
    """Replace the faucet key by a fresh one; its spendable balance moves to the new address by a
    transaction from the old key (on the log: the answer names its txid). Pending grants confirm as usual."""
    from ledgerlog.ops.query.client import NodeClient
    cfg = config_of(ctx)
    node = NodeClient.find(cfg)
    if node is not None:
        try:
            result = {**node.admin("faucet-rotate-key", cfg.admin_token, {}), "via": "node"}
        finally:
            node.close()
    else:
        with open_chain(cfg) as chain:
            result = {**faucet_keys.rotate(_LocalChain(cfg, chain), key_path(cfg)), "via": "local"}
    emit(result)
