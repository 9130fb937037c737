"""The write side's state as a fold over admitted events.

Admission changes the write-side state while it decides (``rules.py``); this module reproduces
exactly those changes from the events that admission recorded, so the state can be rebuilt from
the log. On the embedded log the state is committed in the same WriteBatch as the records and is
never folded; on Kafka, where the append (a broker transaction) and the local state write cannot
be one atomic write, the state store remembers the log positions it reflects and ``catch_up``
folds whatever lies beyond them (records whose state write was lost in a crash) on open, before
anything is admitted.

Order. The state depends on the order events were admitted in, which the log keeps only per
partition. Events carry what is needed to restore it: a block at height h and its confirmed
transactions come after every event stamped below h and before every event stamped h; among the
events stamped h, a provider's registration comes before its readings and settlements, and the
rest commute (sums, maxima, set marks). Mempool entries of one sender share a partition, so
their order is the partition's. ``order_key`` encodes this; ``catch_up`` merges partitions by it.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from typing import Any

from .. import topics as T
from ..avro import encode as avro_encode
from ..codec import Codec
from ..crypto import H
from ..errors import CorruptStoreError
from ..genesis import Genesis
from ..log.base import Log, TopicPartition, ahead_error
from ..movements import confirmed_nonce, movements
from .state import Account, Tip, WriteState

__all__ = ["apply_event", "catch_up", "order_key", "seed_genesis"]

#: Body schema of the events whose id mark stores H(canonical body).
_BODY = {T.PROVIDERS: "ProviderBody", T.SETTLEMENTS: "SettlementBody", T.PAYOUTS: "PayoutBody"}


def order_key(topic: str, event: dict[str, Any]) -> tuple[int, int]:
    """Sort key restoring admission order across partitions (see the module docstring)."""
    if topic == T.TRANSACTIONS:
        return event["height"], 0
    if topic == T.BLOCKS:
        return event["header"]["height"], 1
    if topic == T.PROVIDERS:
        return event["stamp_height"], 2
    return event["stamp_height"], 3


def _move(st: WriteState, topic: str, event: dict[str, Any], genesis: Genesis) -> None:
    for addr, d_bal, d_staked in movements(topic, event, genesis):
        a = st.account(addr)
        st.set_account(addr, Account(a.balance + d_bal, a.staked + d_staked, a.nonce))
    nonce = confirmed_nonce(topic, event)
    if nonce is not None:
        addr, n = nonce
        a = st.account(addr)
        st.set_account(addr, Account(a.balance, a.staked, max(a.nonce, n)))


def _drop_pending(st: WriteState, sender: str, txid: str) -> None:
    st.set_pending(sender, tuple(e for e in st.pending(sender) if e[1] != txid))


def _provider(st: WriteState, provider_id: str, what: str) -> dict[str, Any]:
    prov = st.provider(provider_id)
    if prov is None:
        raise CorruptStoreError(f"{what} names provider {provider_id!r}, which the write-side state "
                                "does not know: the log and the state disagree")
    return prov


def apply_event(state: WriteState, topic: str, event: dict[str, Any], genesis: Genesis) -> None:
    """Change ``state`` as admitting ``event`` on ``topic`` did (the changes are kept in the
    state's batch overlay; ``take_batch`` collects them)."""
    st = state
    if topic == T.TRANSACTIONS:
        _move(st, topic, event, genesis)
        txid = event["txid"]
        if st.tx_status(txid) == "m":  # it left the mempool by confirming
            st.set_mempool_tx(txid, None)
            _drop_pending(st, event["body"]["sender"], txid)
        st.set_tx_status(txid, "c")
    elif topic == T.BLOCKS:
        _move(st, topic, event, genesis)
        for txid in event["evicted"]:
            signed = st._get(b"mpx/" + txid.encode())  # the pending line names its sender
            if signed is None:
                raise CorruptStoreError(f"block {event['hash']} evicts {txid}, which is not in the "
                                        "write-side mempool: the log and the state disagree")
            _drop_pending(st, signed["body"]["sender"], txid)
            st.set_tx_status(txid, "e")
            st.set_mempool_tx(txid, None)
        hdr = event["header"]
        st.set_tip(Tip(hdr["height"], event["hash"], hdr["timestamp"]))
        st.set_block_hash(hdr["height"], event["hash"])
        if hdr["producer"] == genesis.pool.address:
            st.set_pool_round(hdr["height"], genesis.block_reward + event["fees"], 0)
    elif topic == T.MEMPOOL:
        body, txid = event["body"], event["txid"]
        st.set_pending(body["sender"], (*st.pending(body["sender"]),
                                        (body["nonce"], txid, body["amount"] + body["fee"])))
        st.set_tx_status(txid, "m")
        st.set_mempool_tx(txid, {"type": "transaction", "body": body, "pubkey": event["pubkey"],
                                 "signature": event["signature"]})
    elif topic == T.SHARES:
        st.mark_seen("s", event["share_id"], event["share_id"])
    elif topic == T.READINGS:
        body = event["body"]
        prov = _provider(st, body["provider_id"], f"reading {event['reading_id']}")
        st.set_provider(body["provider_id"], {**prov, "credited": prov["credited"] + body["milli_kwh"]})
        st.mark_seen("r", event["reading_id"], event["reading_id"])
    elif topic == T.PROVIDERS:
        body = event["body"]
        _move(st, topic, event, genesis)
        st.mark_seen("v", body["provider_id"], H(avro_encode(_BODY[topic], body)))
        st.set_provider(body["provider_id"], {"owner": body["owner"], "meter_id": body["meter_id"],
                                              "price_per_kwh": body["price_per_kwh"], "credited": 0,
                                              "settled": 0})
    elif topic == T.SETTLEMENTS:
        body = event["body"]
        _move(st, topic, event, genesis)
        st.mark_seen("t", body["settlement_id"], H(avro_encode(_BODY[topic], body)))
        prov = _provider(st, body["provider_id"], f"settlement {body['settlement_id']!r}")
        st.set_provider(body["provider_id"], {**prov, "settled": prov["settled"] + body["milli_kwh"]})
    elif topic == T.PAYOUTS:
        body = event["body"]
        _move(st, topic, event, genesis)
        st.mark_seen("p", body["payout_id"], H(avro_encode(_BODY[topic], body)))
        rnd = st.pool_round(body["round_height"])
        if rnd is None:
            raise CorruptStoreError(f"payout {body['payout_id']!r} names round {body['round_height']}, "
                                    "which is no pool block in the write-side state")
        st.set_pool_round(body["round_height"], rnd[0], rnd[1] + body["amount"])
    elif topic == T.GOVERNANCE:
        body = event["body"]
        if event["seq"] > st.governance_seq():  # one partition: seqs arrive in order
            st.set_governance_seq(event["seq"])
        st.set_parameter(body["parameter"], body["value"], event["seq"])
        st.mark_seen("g", event["change_id"], event["change_id"])
    elif topic == T.KEYS:
        body = event["body"]
        if body["role"] == "log" and st.log_origin() is None:
            st.set_log_origin(body["old_pubkey"])
        st.set_role_key(body["role"], body["old_pubkey"], event["identity"], False)
        st.set_role_key(body["role"], body["new_pubkey"], event["identity"], True)
        st.mark_seen("k", event["rotation_id"], event["rotation_id"])
    else:
        return  # not an event topic of the write side
    st.keep_line()


def seed_genesis(state: WriteState, genesis: Genesis) -> None:
    """The state at height 0 (what ``init_state`` writes), into the state's batch overlay."""
    state.set_tip(Tip(0, genesis.hash, genesis.timestamp))
    for addr, amount in genesis.allocations.items():
        state.set_account(addr, Account(balance=amount))
    state.keep_line()


def _events(log: Log, codec: Codec, topic: str, partition: int, start: int, end: int,
            index: int) -> Iterator[tuple[tuple[int, int], int, int, str, int, dict[str, Any]]]:
    for rec in log.scan(topic, partition, start, end):
        ev = codec.decode(topic, rec.value)
        yield order_key(topic, ev), index, rec.offset, topic, partition, ev


def events_in_order(log: Log, codec: Codec, after: Mapping[TopicPartition, int] | None = None
                    ) -> Iterator[tuple[int, str, int, dict[str, Any]]]:
    """(offset, topic, partition, event) of every event the log holds from ``after`` (default:
    its start), in the order admission applied them (``order_key``)."""
    topics = log.topics()
    feeds: list[Iterator[tuple[tuple[int, int], int, int, str, int, dict[str, Any]]]] = []
    for topic in T.EVENT_TOPICS:
        if topic not in topics:
            continue
        for p, end in enumerate(log.end_offsets(topic)):
            start = (after or {}).get((topic, p), log.start_offsets(topic)[p])
            if start < end:
                feeds.append(_events(log, codec, topic, p, start, end, len(feeds)))
    for _key, _i, offset, topic, p, ev in heapq.merge(*feeds):
        yield offset, topic, p, ev


def catch_up(log: Log, codec: Codec, genesis: Genesis, *, batch: int = 20_000) -> int:
    """Fold every event the log holds beyond the positions the write-side state reflects into
    that state (seeding genesis first if the store is empty), committing state and positions
    together every ``batch`` events. Returns how many events were folded. A no-op for backends
    whose state is written atomically with the records."""
    if log.atomic_state or not log.keeps_state:
        return 0
    st = WriteState(log)
    dirty = False
    if log.state_get(b"tip") is None:
        seed_genesis(st, genesis)
        dirty = True
    stored = log.state_positions()
    ahead = log.ahead(stored)
    if ahead:
        raise ahead_error("the write-side state kept beside this node (<data_dir>/state)", ahead,
                          "point [kafka] at the cluster this node wrote to, or move <data_dir>/state "
                          "aside so the node rebuilds it from the log")
    positions: dict[TopicPartition, int] = {}
    folded = 0
    for offset, topic, p, ev in events_in_order(log, codec, stored):
        apply_event(st, topic, ev, genesis)
        positions[(topic, p)] = offset + 1
        folded += 1
        if folded % batch == 0:
            log.commit_state(st.take_batch(), positions)
            dirty = False
    if dirty or folded % batch:
        log.commit_state(st.take_batch(), positions)
    return folded
