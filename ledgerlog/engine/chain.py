"""A chain on disk: its data dir, genesis, log, codec and admitter, opened or created together."""
from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import replace
from typing import Any

from . import restorejournal
from .admission import Admitter
from .admission.state import WriteState, init_state, record_log_origin
from .admission.state_fold import catch_up
from .admission.verify import Verifier
from .codec import Codec, Registry
from .config import Config
from .errors import ConfigError, GenesisMismatchError, LedgerError
from .files import write_atomic
from .genesis import Genesis, dev_genesis
from .genesis_record import OnLog, check_genesis, mismatch, read_on_log, record_genesis
from .log import KafkaConfig, Log, open_log
from .pendingkeys import finish_rotations
from .rocks import configure as configure_rocks
from .treehead import HeadPublisher, load_log_key, log_key_path

__all__ = ["Chain", "init_chain", "kafka_config", "open_chain", "write_atomic"]

logger = logging.getLogger("ledgerlog.chain")


def kafka_config(config: Config, genesis_hash: str) -> KafkaConfig | None:
    """A Kafka chain's connection config: the [kafka] table, plus (unless it sets them) where the
    backend keeps the write-side state (``<data_dir>/state``) and the chain it serves (its
    transactional id names it). None when the log is not on Kafka."""
    kafka = config.kafka_connection()
    if kafka is None:
        return None
    table = config.kafka
    return kafka.replace(
        state_dir=kafka.state_dir if "ledgerlog.state_dir" in table else os.path.join(config.data_dir, "state"),
        chain=kafka.chain if "ledgerlog.chain" in table else (genesis_hash or None))


class Chain:
    """An opened chain. ``read_only`` opens the log without taking its write lock."""

    def __init__(self, config: Config, *, read_only: bool = False) -> None:
        restorejournal.recover(config.data_dir)  # a restore killed half-way is finished first
        if not os.path.exists(config.genesis_path):
            raise ConfigError(f"{config.data_dir} has no genesis.json: run `ledgerlog init` (it restores "
                              "genesis.json from the log of an existing chain, and creates a chain "
                              "where there is none)")
        self.config = config
        configure_rocks(config.rocks_tuning())
        self.genesis = Genesis.load(config.genesis_path)
        self.read_only = read_only
        self.log: Log = open_log(config.resolved_log_url, read_only=read_only, sync=config.sync,
                                 kafka=kafka_config(config, self.genesis.hash))
        try:
            self.codec = Codec(Registry(self.log)) if read_only else Codec.register_all(self.log)
            if not read_only:
                self._add_new_topics()
            check_genesis(self.log, self.codec, self.genesis, record=not read_only)
            if not read_only:
                catch_up(self.log, self.codec, self.genesis)  # Kafka: fold what lies beyond the state
                if self.log.keeps_state:  # a key rotation killed before its file was renamed
                    finish_rotations(config.keys_dir, self.genesis, WriteState(self.log))
            self.heads = self._head_publisher()
        except LedgerError:
            self.log.close()
            raise
        self._admitter: Admitter | None = None

    def _head_publisher(self) -> HeadPublisher:
        """The tree heads (PROTOCOL.md §9): a writer's open publishes them with the log key (made
        here for a chain made before log keys were); a read-only open only reads them."""
        if self.read_only:
            return HeadPublisher(self.log, self.codec, self.genesis.chain_id, None, self._log_keys,
                                 lambda: WriteState(self.log).log_key_now() if self.log.keeps_state else None,
                                 cache=self.config.heads_cache_path)
        recorded = self._recorded_log_key()
        missing = not os.path.exists(log_key_path(self.config.keys_dir))
        signer = load_log_key(self.config.keys_dir, create=True)
        assert signer is not None
        if missing and recorded is not None:
            logger.warning("the log key %s... is not in %s (a restore without --with-keys?): new tree heads "
                           "are signed by a new key, %s..., which no key rotation names; auditors must pin "
                           "it anew. Put the old keys/log.key back and restart to keep the old key.",
                           recorded[:16], self.config.keys_dir, signer.pubkey[:16])
        if self.log.keeps_state:
            record_log_origin(self.log, signer.pubkey)
        return HeadPublisher(self.log, self.codec, self.genesis.chain_id, signer, self._log_keys,
                             cache=self.config.heads_cache_path)

    def _log_keys(self) -> set[str]:
        """The keys that have held this chain's log role (the state's; else the key file's)."""
        if self.log.keeps_state:
            keys = WriteState(self.log).log_keys()
            if keys:
                return keys
        signer = load_log_key(self.config.keys_dir, create=False)
        return {signer.pubkey} if signer else set()

    def _recorded_log_key(self) -> str | None:
        """The key the chain's state says holds the log role now (None without state)."""
        return WriteState(self.log).log_key_now() if self.log.keeps_state else None

    @property
    def log_pubkey(self) -> str | None:
        """The key that signs this chain's tree heads now: the writer's, else the one the chain's
        state names (so a reader needs no key file), else the key file's."""
        if self.heads.signer is not None:
            return self.heads.signer.pubkey
        recorded = self._recorded_log_key()
        if recorded is not None:
            return recorded
        signer = load_log_key(self.config.keys_dir, create=False)
        return signer.pubkey if signer else None

    def reload_log_key(self) -> None:
        """Sign heads with the key file's key from now on (after a rotation of role ``log``)."""
        signer = load_log_key(self.config.keys_dir, create=False)
        if not self.read_only and signer is not None:
            self.heads.signer = signer

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
        """A reader of the committed write-side state, with a cache of its own. Never the
        admitter's: that one is used under its lock only (read outside it while a chunk's
        append is in flight, its cache could keep the value the append replaces)."""
        return WriteState(self.log)

    def status(self) -> dict[str, Any]:
        tip = self.write_state().tip()
        return {"chain_id": self.genesis.chain_id, "height": tip.height, "tip_hash": tip.hash,
                "genesis_hash": self.genesis.hash, "log_pubkey": self.log_pubkey}

    def close(self, *, publish: bool = True) -> None:
        """Publish the heads of what grew (a clean stop, PROTOCOL.md §9; ``publish`` False: not
        a clean stop), then close the log."""
        try:
            if publish and self.heads.signer is not None and self.log.writable:
                self.heads.publish()
                self.heads.save(force=True)  # the next open reads only heads published after this
        except LedgerError as exc:  # the records are durable; the next writer publishes their heads
            logger.warning("could not publish tree heads at close: %s", exc)
        finally:
            if self._admitter is not None:
                self._admitter.verifier.close()
            self.log.close()

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        """Leaving by an exception is no clean stop: the next writer publishes the heads (an
        ingest that failed on a cut broker does not wait for it again to publish them)."""
        self.close(publish=exc_type is None)


def _on_log(config: Config, genesis_hash: str) -> OnLog | None:
    """What an existing log says of its genesis (None where there is no log yet)."""
    url = config.resolved_log_url
    if url.startswith("embedded:") and not os.path.exists(os.path.join(url[len("embedded:"):], "CURRENT")):
        return None
    log = open_log(url, read_only=True, sync=config.sync, kafka=kafka_config(config, genesis_hash))
    try:
        return read_on_log(log)
    finally:
        log.close()


def init_chain(config: Config, genesis: dict[str, Any] | None = None) -> Genesis:
    """Create the data dir, log topics, schema registry and genesis state. Idempotent for the
    same genesis; never replaces a chain (PROTOCOL.md §7): a log that holds events keeps the
    genesis it was started with, and genesis.json is restored from it when missing."""
    os.makedirs(config.data_dir, exist_ok=True)
    given = Genesis.from_dict(genesis) if genesis is not None else None
    existing = Genesis.load(config.genesis_path) if os.path.exists(config.genesis_path) else None
    if given is not None and existing is not None and given.hash != existing.hash:
        raise GenesisMismatchError(f"{config.data_dir} already holds chain {existing.chain_id} "
                                   f"(genesis {existing.hash[:16]}); use another --data-dir")
    chosen = given or existing
    on_log = _on_log(config, chosen.hash if chosen else "")
    if on_log is not None and on_log.hash is not None:
        if chosen is not None and chosen.hash != on_log.hash:
            raise mismatch(chosen, on_log, "the given genesis" if given else "genesis.json")
        if chosen is None and on_log.genesis is not None:
            chosen = Genesis.from_dict(on_log.genesis)  # genesis.json was lost: the log has it
    if chosen is None and on_log is not None and on_log.holds_events:
        raise GenesisMismatchError(f"{config.data_dir}: the log holds events but no record of its genesis "
                                   "and genesis.json is missing; restore genesis.json from a backup")
    g = chosen or Genesis.from_dict(dev_genesis(config.keys_dir))
    log = open_log(config.resolved_log_url, read_only=False, sync=config.sync, kafka=kafka_config(config, g.hash))
    try:
        log.create_topics(config.topic_partitions())
        Codec.register_all(log)
        if log.keeps_state and log.state_get(b"tip") is None:
            init_state(log, g)
        log_key = load_log_key(config.keys_dir, create=True)  # signs the tree heads (PROTOCOL.md §9)
        if log.keeps_state and log_key is not None:
            record_log_origin(log, log_key.pubkey)
        if read_on_log(log).genesis is None:
            record_genesis(log, g)
    finally:
        log.close()
    if not os.path.exists(config.config_path):
        cfg = config if config.admin_token else replace(config, admin_token=secrets.token_urlsafe(32))
        write_atomic(config.config_path, cfg.to_toml().encode(), mode=0o600)
    write_atomic(config.genesis_path, json.dumps(g.raw, indent=2, sort_keys=True).encode() + b"\n")
    return g


def open_chain(config: Config, *, read_only: bool = False) -> Chain:
    return Chain(config, read_only=read_only)
