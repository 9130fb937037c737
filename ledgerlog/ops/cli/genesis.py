"""`ledgerlog genesis show`: the genesis the log was started with, read from the log itself, so
a lost or edited genesis.json can be checked and recovered."""
from __future__ import annotations

import typer

from ledgerlog.engine.chain import kafka_config
from ledgerlog.engine.crypto import H, canonical_json
from ledgerlog.engine.genesis_record import read_on_log
from ledgerlog.engine.log import open_log
from ledgerlog.ops.cli import app, config_of, emit, fail

genesis_app = typer.Typer(help="The genesis recorded on the log.", no_args_is_help=True)
app.add_typer(genesis_app, name="genesis")


@genesis_app.command("show")
def genesis_show(ctx: typer.Context,
                 hash_only: bool = typer.Option(False, "--hash", help="Print only {chain_id, genesis_hash}.")) -> None:
    """Print the genesis recorded on the log (as genesis.json holds it; `> genesis.json` restores it)."""
    cfg = config_of(ctx)
    log = open_log(cfg.resolved_log_url, read_only=True, sync=cfg.sync, kafka=kafka_config(cfg, ""))
    try:
        on_log = read_on_log(log)
    finally:
        log.close()
    if on_log.genesis is None:
        fail("the log holds no genesis record (a chain made before it existed gets one at its next "
             "start)" + (f"; block 1 names genesis hash {on_log.block1_prev_hash}" if on_log.block1_prev_hash else ""),
             1, code="NOT_FOUND")
    if hash_only:
        emit({"chain_id": on_log.genesis["chain_id"], "genesis_hash": H(canonical_json(on_log.genesis))})
    else:
        emit(on_log.genesis)
