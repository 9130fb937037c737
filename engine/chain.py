"""A chain on disk: its data dir, genesis, log, codec and admitter, opened or created together."""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import replace
from typing import Any

from . import restorejournal
from .admission import Admitter
from .admission.state import WriteState, init_state
from .admission.state_fold import catch_up
from .admission.verify import Verifier
from .codec import Codec, Registry
from .config import Config
from .errors import ConfigError, LedgerError
from .files import write_atomic
from .genesis import Genesis, dev_genesis
from .log import Log, open_log

__all__ = ["Chain", "init_chain", "open_chain", "write_atomic"]


def _log_conf(config: Config, genesis_hash: str) -> dict[str, str]:
    """Backend settings: the [kafka] table, plus where the Kafka backend keeps the write-side
    state (``<data_dir>/state``) and the chain it serves (its transactional id names it)."""
    conf = dict(config.kafka)
    if config.resolved_log_url.startswith("kafka://"):
        conf.setdefault("ledgerlog.state_dir", os.path.join(config.data_dir, "state"))
        conf.setdefault("ledgerlog.chain", genesis_hash)
    return conf


class Chain:
    """An opened chain. ``read_only`` opens the log without taking its write lock."""

    def __init__(self, config: Config, *, read_only: bool = False) -> None:
        restorejournal.recover(config.data_dir)  # a restore killed half-way is finished first
        if not os.path.exists(config.genesis_path):
            raise ConfigError(f"{config.data_dir} holds no chain; run `ledgerlog init` first")
        self.config = config
        self.genesis = Genesis.load(config.genesis_path)
        self.read_only = read_only
        self.log: Log = open_log(config.resolved_log_url, read_only=read_only, sync=config.sync,
                                 **_log_conf(config, self.genesis.hash))
        try:
            self.codec = Codec(Registry(self.log)) if read_only else Codec.register_all(self.log)
            if not read_only:
                self._add_new_topics()
                catch_up(self.log, self.codec, self.genesis)  # Kafka: fold what lies beyond the state
        except LedgerError:
            self.log.close()
            raise
        self._admitter: Admitter | None = None

    def _add_new_topics(self) -> None:
        """Topics this version added (e.g. ledger.keys) on a chain an older version created."""
        have = self.log.topics()
        missing = {t: n for t, n in self.config.topic_partitions().items() if t not in have}
        if missing:
            self.log.create_topics(missing)

    @property
    def admitter(self) -> Admitter:
        if self._admitter is None:
            if self.read_only:
                raise ConfigError("the chain is open read-only; ingest through the running node")
            self._admitter = Admitter(self.log, self.codec, self.genesis, chunk=self.config.ingest_chunk,
                                      verifier=Verifier(self.config.verify_workers or os.cpu_count() or 1))
        return self._admitter

    def write_state(self) -> WriteState:
        return self.admitter.state if self._admitter else WriteState(self.log)

    def status(self) -> dict[str, Any]:
        tip = self.write_state().tip()
        return {"chain_id": self.genesis.chain_id, "height": tip.height, "tip_hash": tip.hash,
                "genesis_hash": self.genesis.hash}

    def close(self) -> None:
        if self._admitter is not None:
            self._admitter.verifier.close()
        self.log.close()

    def __enter__(self) -> "Chain":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def init_chain(config: Config, genesis: dict[str, Any] | None = None) -> Genesis:
    """Create the data dir, log topics, schema registry and genesis state. Idempotent for the
    same genesis; refuses a different one."""
    os.makedirs(config.data_dir, exist_ok=True)
    if os.path.exists(config.genesis_path):
        existing = Genesis.load(config.genesis_path)
        if genesis is not None and Genesis.from_dict(genesis).hash != existing.hash:
            raise ConfigError(f"{config.data_dir} already holds chain {existing.chain_id} "
                              f"(genesis {existing.hash[:16]}); use another --data-dir")
        if genesis is None:
            genesis = existing.raw
    g = Genesis.from_dict(genesis if genesis is not None else dev_genesis(config.keys_dir))
    log = open_log(config.resolved_log_url, read_only=False, sync=config.sync, **_log_conf(config, g.hash))
    try:
        log.create_topics(config.topic_partitions())
        Codec.register_all(log)
        if log.keeps_state and log.state_get(b"tip") is None:
            init_state(log, g)
    finally:
        log.close()
    if not os.path.exists(config.config_path):
        cfg = config if config.admin_token else replace(config, admin_token=secrets.token_urlsafe(32))
        write_atomic(config.config_path, cfg.to_toml().encode(), mode=0o600)
    write_atomic(config.genesis_path, json.dumps(g.raw, indent=2, sort_keys=True).encode() + b"\n")
    return g


def open_chain(config: Config, *, read_only: bool = False) -> Chain:
    return Chain(config, read_only=read_only)
