"""The genesis a log was started with travels with the log: one record on ``_genesis`` (key: the
chain id, value: the genesis in its canonical bytes, PROTOCOL.md §2, so H(value) is the genesis
hash). Every open checks genesis.json against it; ``init`` restores genesis.json from it and
never replaces a chain (PROTOCOL.md §7). Logs written before the record existed get it on their
first start; until then block 1's ``prev_hash`` names the genesis hash."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import topics as T
from .codec import Codec, Registry
from .crypto import H, canonical_json
from .errors import GenesisMismatchError
from .genesis import Genesis
from .log.base import Log, Record

__all__ = ["OnLog", "read_on_log", "record_genesis", "check_genesis", "mismatch"]


@dataclass(frozen=True)
class OnLog:
    """What a log says of its genesis."""

    genesis: dict[str, Any] | None  # the recorded genesis
    block1_prev_hash: str | None     # block 1's prev_hash: the genesis hash, record or not
    holds_events: bool

    @property
    def hash(self) -> str | None:
        if self.genesis is not None:
            return H(canonical_json(self.genesis))
        return self.block1_prev_hash


def read_on_log(log: Log, codec: Codec | None = None) -> OnLog:
    topics = log.topics()
    recorded = None
    if T.GENESIS in topics:
        recs = log.read(T.GENESIS, 0, 0, 1)
        recorded = json.loads(recs[0].value) if recs else None
    prev = None
    if T.BLOCKS in topics and log.end_offsets(T.BLOCKS)[0] > 0 and log.start_offsets(T.BLOCKS)[0] == 0:
        # (a log pruned past block 1 has its genesis record: a prune opens the chain for writing)
        first = log.read(T.BLOCKS, 0, 0, 1)
        if first:
            prev = (codec or Codec(Registry(log))).decode(T.BLOCKS, first[0].value)["header"]["prev_hash"]
    holds = any(sum(log.end_offsets(t)) for t in T.EVENT_TOPICS if t in topics)
    return OnLog(recorded, prev, holds)


def record_genesis(log: Log, genesis: Genesis) -> None:
    if T.GENESIS not in log.topics():
        log.create_topics({T.GENESIS: 1})
    log.append([Record(T.GENESIS, genesis.chain_id.encode(), canonical_json(genesis.raw),
                       genesis.timestamp, 0)])


def mismatch(genesis: Genesis, on_log: OnLog, where: str) -> GenesisMismatchError:
    recorded = on_log.genesis.get("chain_id") if on_log.genesis else None
    return GenesisMismatchError(
        f"{where} (chain {genesis.chain_id}, genesis {genesis.hash[:16]}) is not the genesis this "
        f"log was started with (chain {recorded or '?'}, genesis {(on_log.hash or '?')[:16]}); "
        "`ledgerlog genesis show` prints the log's: put it back as genesis.json (`ledgerlog init` "
        "with no --genesis does), or use another --data-dir for another chain")


def check_genesis(log: Log, codec: Codec, genesis: Genesis, *, record: bool) -> None:
    """Refuse a genesis the log was not started with; ``record`` it if the log has no record yet."""
    on_log = read_on_log(log, codec)
    if on_log.hash is not None and on_log.hash != genesis.hash:
        raise mismatch(genesis, on_log, "genesis.json")
    if on_log.genesis is None and record:
        record_genesis(log, genesis)
