"""Log checks for `ledgerlog verify`: every record of every topic partition, re-checked against
PROTOCOL.md (ids, signatures, hash links, tx roots, placement, cross references)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ledgerlog.engine import avro, intjson
from ledgerlog.engine import topics as T
from ledgerlog.engine.admission.roles import genesis_identity
from ledgerlog.engine.chain import Chain
from ledgerlog.engine.crypto import H, address_of, canonical_json, tx_root
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.governance import PARAMETERS, out_of_range
from ledgerlog.engine.logtree import CHUNK_LEVEL, has_tree, leaf_of
from ledgerlog.engine.merkle import Frontier
from ledgerlog.engine.partitioner import partition_for
from ledgerlog.ops.verify.pruned import PrunedPrefix
from ledgerlog.ops.verify.records import RecordReader
from ledgerlog.ops.verify.signatures import Signatures
from ledgerlog.ops.verify.storage import (
    Section,
)

_PROGRESS_STEP = 1024  # records between progress reports

#: Partition key of each event topic (what the admitter keys records by).
_RECORD_KEY: dict[str, Callable[[dict[str, Any]], str] | None] = {
    T.BLOCKS: None,  # chain_id, checked against genesis
    T.TRANSACTIONS: lambda ev: ev["body"]["sender"],
    T.MEMPOOL: lambda ev: ev["body"]["sender"],
    T.SHARES: lambda ev: ev["address"],
    T.PROVIDERS: lambda ev: ev["body"]["provider_id"],
    T.READINGS: lambda ev: ev["body"]["provider_id"],
    T.SETTLEMENTS: lambda ev: ev["body"]["provider_id"],
    T.PAYOUTS: lambda ev: ev["body"]["address"],
    T.KEYS: lambda ev: ev["body"]["role"],
    T.ADMIN: lambda ev: ev["action"],
    T.GOVERNANCE: lambda ev: ev["body"]["parameter"],
}
#: Topics in the order they are checked (cross references are resolved at the end).
#: Key rotations come first: the signer checks of the other kinds depend on when they took effect;
#: then governance changes, which the registrations' checks depend on.
_TOPIC_ORDER = (T.SCHEMAS, T.KEYS, T.GOVERNANCE, T.BLOCKS, T.TRANSACTIONS, T.MEMPOOL, T.PROVIDERS, T.READINGS,
                T.SETTLEMENTS, T.PAYOUTS, T.SHARES, T.ADMIN, T.CHECKPOINTS)
_NEVER = 1 << 63


# -- the log --------------------------------------------------------------------------------------
class _LogChecker:
    """Reads every record once, checks it on its own, and keeps what the cross checks need."""

    def __init__(self, chain: Chain, sec: Section, signatures: bool, workers: int) -> None:
        self.chain = chain
        self.log = chain.log
        self.codec = chain.codec
        self.g: Genesis = chain.genesis
        self.sec = sec
        self.sigs = Signatures(sec, workers, signatures)
        self.topics = self.log.topics()
        # blocks
        self.height = 0
        self.tip_hash = self.g.hash
        self.tip_ts = self.g.timestamp
        self.blocks: dict[int, tuple[str, str, int, str]] = {}  # height -> hash, producer, fees, where
        self.block_hashes: set[str] = set()
        self.block_txids: dict[str, tuple[int, int, str]] = {}  # txid -> height, index, block hash
        # other kinds
        self.confirmed: dict[str, tuple[int, int, str, int, str]] = {}  # txid -> h, i, hash, fee, where
        self.submitted: set[str] = set()
        self.reading_ids: set[str] = set()
        self.readings: list[tuple[str, str]] = []  # provider_id, where
        self.providers: dict[str, str] = {}  # provider_id -> owner
        self.settlements: dict[str, tuple[str, str, str]] = {}  # id -> provider_id, owner, where
        self.payouts: dict[str, tuple[int, str]] = {}  # id -> round_height, where
        self.share_ids: set[str] = set()
        # (role, pubkey) -> [identity, first stamp height it signs at, last]: keys rotations named
        self.role_keys: dict[tuple[str, str], list[Any]] = {}
        self.rotation_ids: set[str] = set()
        # governance (docs/PROTOCOL.md §8.5): parameter -> [(stamp_height, value)] in seq order
        self.changes: dict[str, list[tuple[int, int]]] = {n: [] for n in PARAMETERS}
        self.change_ids: set[str] = set()
        self.gov_seq = 0
        self.gov_stamp = 0
        self.counts: dict[str, int] = {}
        self._placement: dict[tuple[bytes, str], int] = {}  # keys repeat: murmur2 once per key
        self.reader = RecordReader(self.log, self.sec, chain.config.log_path, self.topics)
        self.progress: Callable[[int], None] | None = None  # told of the records read, in steps
        point = self.log.prune_point()
        self.pruned = PrunedPrefix(self.log, point, chain.config.anchor_dir) if point is not None else None
        if point is not None:  # the chain continues from the last block below the prune
            self.height, self.tip_hash, self.tip_ts = point.tip

    def _partition_of(self, key: bytes, topic: str) -> int:
        p = self._placement.get((key, topic))
        if p is None:
            p = self._placement[(key, topic)] = partition_for(key, self.topics[topic])
        return p

    # -- reading ----------------------------------------------------------------------------
    def run(self) -> None:
        order = [t for t in _TOPIC_ORDER if t in self.topics] + sorted(set(self.topics) - set(_TOPIC_ORDER))
        for topic in order:
            ends = self.log.end_offsets(topic)
            for p, end in enumerate(ends):
                self._partition(topic, p, end)
        self.reader.stray_records()
        self.sigs.flush()
        self.sigs.close()
        try:
            self._cross_checks()
        finally:
            if self.pruned is not None:
                self.pruned.close()
        self.sec.extra.update({"records": self.counts, "height": self.height, "tip_hash": self.tip_hash,
                               "signatures_verified": self.sigs.count if self.sigs.enabled else None})
        if self.pruned is not None:
            for name, why in sorted(self.pruned.damaged.items()):
                self.sec.problem("ANCHOR_DAMAGED", f"anchor {name}", f"{why}; the anchor cannot be rebuilt from the "
                                 "pruned log: restore the data dir from a snapshot")
            self.sec.extra["pruned"] = self.pruned.report()
            self.sec.notes.append(f"the log was pruned below height {self.pruned.point.height}: events below it "
                                  "are not re-checked (see pruned)")

    def _partition(self, topic: str, p: int, end: int) -> None:
        n = 0
        tree = Frontier() if has_tree(topic) and self.log.trees is not None else None
        mismatched: list[tuple[int, int]] = []
        if tree is not None and self.pruned is not None:  # the pruned leaves, as stored at the prune
            for leaf in self.pruned.leaves(topic, p):
                for level, index, h in tree.append(leaf):
                    if level >= CHUNK_LEVEL and self.log.trees.node(topic, p, level, index) != h:  # type: ignore[union-attr]
                        mismatched.append((level, index))
        for off, key, ts, value in self.reader.records(topic, p, self.pruned.start(topic, p) if self.pruned is not None else 0, end):
            n += 1
            if self.progress is not None and not n % _PROGRESS_STEP:
                self.progress(_PROGRESS_STEP)
            self._record(topic, p, off, key, ts, value)
            if tree is not None:
                for level, index, h in tree.append(leaf_of(key, ts, value)):
                    if level >= CHUNK_LEVEL and self.log.trees.node(topic, p, level, index) != h:  # type: ignore[union-attr]
                        mismatched.append((level, index))
        if self.progress is not None:
            self.progress(n % _PROGRESS_STEP)
        self.sec.checked += n
        self.counts[topic] = self.counts.get(topic, 0) + n
        if tree is not None:
            self._tree(topic, p, tree, mismatched)

    def _tree(self, topic: str, p: int, tree: Frontier, mismatched: list[tuple[int, int]]) -> None:
        """The partition's stored Merkle tree (PROTOCOL.md §9) against the one its records make."""
        stored = self.log.trees.state(topic, p)  # type: ignore[union-attr]
        if (stored.size, stored.root()) == (tree.size, tree.root()) and not mismatched:
            return
        first = f"; first stored subtree that differs: level {mismatched[0][0]}, index {mismatched[0][1]}" if mismatched else ""
        self.sec.problem("TREE_MISMATCH", f"{topic}[{p}]",
                         f"the stored Merkle tree ({stored.size} leaves, root {stored.root().hex()[:16]}...) is not "
                         f"the tree of the {tree.size} records ({tree.root().hex()[:16]}...){first}: records were "
                         "changed outside ledgerlog or the tree store is damaged; `ledgerlog audit` tells which "
                         "against the published heads")

    def _record(self, topic: str, p: int, off: int, key: bytes, ts: int, value: bytes) -> None:
        where = f"{topic}[{p}]@{off}"
        if topic == T.SCHEMAS:
            try:
                doc = orjson.loads(value)
                avro.parse_text(doc["schema"])
                if not {"subject", "version", "id"} <= set(doc):
                    raise ValueError("missing subject, version or id")
            except Exception as exc:
                self.sec.problem("UNDECODABLE", where, f"schema record does not decode: {exc}")
            return
        if topic not in T.EVENT_SCHEMA:
            return  # opaque to verify (e.g. _checkpoints): contiguity only
        try:
            ev = self.codec.decode(topic, value)
        except Exception as exc:
            self.sec.problem("UNDECODABLE", where, f"value does not decode: {type(exc).__name__}: {exc}")
            return
        want_key = self.g.chain_id if topic == T.BLOCKS else _RECORD_KEY[topic](ev)  # type: ignore[misc]
        if key != want_key.encode():
            self.sec.problem("WRONG_KEY", where, f"record key {key[:80]!r}, the event's is {want_key!r}")
        elif self._partition_of(key, topic) != p:
            self.sec.problem("WRONG_PARTITION", where, f"key {want_key!r} belongs in another partition")
        try:
            getattr(self, "_" + topic.replace(".", "_"))(where, ev, ts)
        except (KeyError, TypeError, ValueError) as exc:
            self.sec.problem("BAD_EVENT", where, f"event is not well formed: {type(exc).__name__}: {exc}")

    # -- per kind ---------------------------------------------------------------------------
    def _canonical(self, name: str, body: dict[str, Any], where: str) -> bytes | None:
        try:
            return avro.encode(name, body)
        except Exception as exc:
            self.sec.problem("BAD_EVENT", where, f"{name} does not encode: {exc}")
            return None

    def _chain_id(self, body: dict[str, Any], where: str) -> None:
        if body["chain_id"] != self.g.chain_id:
            self.sec.problem("WRONG_CHAIN", where, f"chain_id {body['chain_id']!r} is not {self.g.chain_id!r}")

    def _signer(self, ev: dict[str, Any], address: str, where: str, what: str) -> None:
        try:
            have = address_of(bytes.fromhex(ev["pubkey"]))
        except ValueError:
            have = None
        if have != address:
            self.sec.problem("BAD_SIGNATURE", where, f"{what}: pubkey is not the key of {address}")

    def _timestamp(self, ts: int, want: int, where: str) -> None:
        if ts != want:
            self.sec.problem("BAD_TIMESTAMP", where, f"record timestamp {ts}, the event's is {want}")

    def _unique(self, seen: set[str], ident: str, where: str, what: str) -> None:
        if ident in seen:
            self.sec.problem("DUPLICATE_ID", where, f"{what} {ident} appears more than once")
        seen.add(ident)

    def _ledger_blocks(self, where: str, ev: dict[str, Any], ts: int) -> None:
        hdr = ev["header"]
        self._chain_id(hdr, where)
        canon = self._canonical("BlockHeader", hdr, where)
        block_hash = H(canon) if canon is not None else ev["hash"]
        h = hdr["height"]
        where = f"{where} (height {h})"
        if ev["hash"] != block_hash:
            self.sec.problem("BAD_HASH", where, f"recorded hash {ev['hash']} but H(header) is {block_hash}")
        self._unique(self.block_hashes, block_hash, where, "block hash")
        if h != self.height + 1:
            self.sec.problem("BAD_HEIGHT", where, f"height {h} follows height {self.height}")
        if hdr["prev_hash"] != self.tip_hash:
            self.sec.problem("BAD_PREV_HASH", where, f"prev_hash {hdr['prev_hash']} is not the previous "
                                                     f"block's hash {self.tip_hash}")
        if hdr["timestamp"] <= self.tip_ts:
            self.sec.problem("BAD_TIMESTAMP", where, f"timestamp {hdr['timestamp']} is not after {self.tip_ts}")
        self._timestamp(ts, hdr["timestamp"], where)
        identity = self._identity("producer", ev["pubkey"], h, block=True)
        if identity is None:
            self.sec.problem("UNKNOWN_PRODUCER", where, f"producer key {ev['pubkey']} is not in genesis "
                                                        "(or not at this height, after key rotations)")
        elif identity != hdr["producer"]:
            self.sec.problem("BAD_SIGNATURE", where, f"header: pubkey is not the key of {hdr['producer']}")
        if canon is not None:
            self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "header")
        txids = ev["txids"]
        if hdr["tx_count"] != len(txids):
            self.sec.problem("BAD_TX_ROOT", where, f"tx_count {hdr['tx_count']} but {len(txids)} txids")
        try:
            root = tx_root(txids)
        except ValueError:
            root = "<txids are not hex>"
        if root != hdr["tx_root"]:
            self.sec.problem("BAD_TX_ROOT", where, f"tx_root {hdr['tx_root']} but the txids give {root}")
        if ev["reward"] != self.g.block_reward:
            self.sec.problem("BAD_REWARD", where, f"reward {ev['reward']}, genesis says {self.g.block_reward}")
        if h in self.blocks:
            self.sec.problem("DUPLICATE_ID", where, f"a second block at height {h}")
        self.blocks[h] = (block_hash, hdr["producer"], ev["fees"], where)
        for i, txid in enumerate(txids):
            if txid in self.block_txids:
                self.sec.problem("DUPLICATE_ID", where, f"txid {txid} is also in block {self.block_txids[txid][0]}")
                continue
            self.block_txids[txid] = (h, i, block_hash)
        self.height, self.tip_hash, self.tip_ts = h, block_hash, hdr["timestamp"]

    def _transaction(self, where: str, ev: dict[str, Any], ts: int, what: str) -> str | None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("TransactionBody", body, where)
        if canon is None:
            return None
        txid = H(canon)
        if ev["txid"] != txid:
            self.sec.problem("BAD_ID", where, f"txid {ev['txid']} but H(body) is {txid}")
        self._signer(ev, body["sender"], where, what)
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, what)
        if body["amount"] <= 0 or body["fee"] < self.g.min_fee:
            self.sec.problem("BAD_AMOUNT", where, f"amount {body['amount']} / fee {body['fee']} is not admissible")
        self._timestamp(ts, body["timestamp"], where)
        return txid

    def _ledger_transactions(self, where: str, ev: dict[str, Any], ts: int) -> None:
        txid = self._transaction(where, ev, ts, "transaction")
        if txid is None:
            return
        if txid in self.confirmed:
            self.sec.problem("DUPLICATE_ID", where, f"txid {txid} is confirmed more than once "
                                                    f"(also {self.confirmed[txid][4]})")
            return
        self.confirmed[txid] = (ev["height"], ev["index"], ev["block_hash"], ev["body"]["fee"], where)

    def _ledger_mempool(self, where: str, ev: dict[str, Any], ts: int) -> None:
        txid = self._transaction(where, ev, ts, "mempool transaction")
        if txid is not None:
            self._unique(self.submitted, txid, where, "submitted txid")

    def _pool_shares(self, where: str, ev: dict[str, Any], ts: int) -> None:
        line = {"type": "share", "worker": ev["worker"], "job_id": ev["job_id"], "height": ev["height"],
                "difficulty": ev["difficulty"], "accepted": ev["accepted"], "timestamp": ev["timestamp"]}
        share_id = H(canonical_json(line))
        if ev["share_id"] != share_id:
            self.sec.problem("BAD_ID", where, f"share_id {ev['share_id']} but the share line hashes to {share_id}")
        self._unique(self.share_ids, share_id, where, "share id")
        if ev["worker"].split(".", 1)[0] != ev["address"]:
            self.sec.problem("BAD_EVENT", where, f"address {ev['address']} is not worker {ev['worker']}'s")
        if ev["difficulty"] <= 0:
            self.sec.problem("BAD_AMOUNT", where, f"difficulty {ev['difficulty']} is not positive")
        self._timestamp(ts, ev["timestamp"], where)

    def _energy_readings(self, where: str, ev: dict[str, Any], ts: int) -> None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("ReadingBody", body, where)
        if canon is None:
            return
        reading_id = H(canon)
        if ev["reading_id"] != reading_id:
            self.sec.problem("BAD_ID", where, f"reading_id {ev['reading_id']} but H(body) is {reading_id}")
        self._unique(self.reading_ids, reading_id, where, "reading id")
        if self._identity("oracle", ev["pubkey"], ev["stamp_height"]) is None:
            self.sec.problem("UNKNOWN_ORACLE", where, f"oracle key {ev['pubkey']} is not in genesis "
                                                      "(or not at this height, after key rotations)")
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "reading")
        if body["milli_kwh"] <= 0:
            self.sec.problem("BAD_AMOUNT", where, f"milli_kwh {body['milli_kwh']} is not positive")
        self.readings.append((body["provider_id"], where))
        self._timestamp(ts, body["timestamp"], where)

    def _energy_providers(self, where: str, ev: dict[str, Any], ts: int) -> None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("ProviderBody", body, where)
        if canon is None:
            return
        self._signer(ev, body["owner"], where, "provider")
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "provider")
        pid = body["provider_id"]
        if pid in self.providers:
            self.sec.problem("DUPLICATE_ID", where, f"provider_id {pid!r} is registered more than once")
        self.providers[pid] = body["owner"]
        stamp = ev["stamp_height"]
        if body["price_per_kwh"] <= 0 or body["stake"] <= 0:
            self.sec.problem("BAD_AMOUNT", where, f"stake {body['stake']} / price {body['price_per_kwh']} is not admissible")
        elif body["stake"] < min(self._in_force("min_stake", stamp)):
            self.sec.problem("STAKE_TOO_LOW", where, f"stake {body['stake']} is below min_stake at height {stamp}")
        elif body["price_per_kwh"] > max(self._in_force("max_price_per_kwh", stamp)):
            self.sec.problem("PRICE_TOO_HIGH", where, f"price {body['price_per_kwh']} is above max_price_per_kwh "
                                                      f"at height {stamp}")
        self._timestamp(ts, body["timestamp"], where)

    def _energy_settlements(self, where: str, ev: dict[str, Any], ts: int) -> None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("SettlementBody", body, where)
        if canon is None:
            return
        self._role_signer(ev, "treasury", self.g.energy.treasury, where, "settlement")
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "settlement")
        sid = body["settlement_id"]
        if sid in self.settlements:
            self.sec.problem("DUPLICATE_ID", where, f"settlement_id {sid!r} appears more than once")
        self.settlements[sid] = (body["provider_id"], ev["owner"], where)
        if body["amount"] <= 0 or body["milli_kwh"] <= 0:
            self.sec.problem("BAD_AMOUNT", where, "amount and milli_kwh must be positive")
        self._timestamp(ts, body["timestamp"], where)

    def _pool_payouts(self, where: str, ev: dict[str, Any], ts: int) -> None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("PayoutBody", body, where)
        if canon is None:
            return
        self._role_signer(ev, "pool", self.g.pool.address, where, "payout")
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "payout")
        pid = body["payout_id"]
        if pid in self.payouts:
            self.sec.problem("DUPLICATE_ID", where, f"payout_id {pid!r} appears more than once")
        self.payouts[pid] = (body["round_height"], where)
        if body["amount"] <= 0:
            self.sec.problem("BAD_AMOUNT", where, f"amount {body['amount']} is not positive")
        self._timestamp(ts, body["timestamp"], where)

    # -- governance (docs/PROTOCOL.md §8.5) ---------------------------------------------------
    def _in_force(self, name: str, stamp: int) -> list[int]:
        """The values ``name`` may have had for an event stamped ``stamp``: the one in force at the
        end of height stamp-1 and any set at stamp itself (the order of events within a height is
        kept only per partition, so a registration stamped with a change may precede it)."""
        before = PARAMETERS[name].initial(self.g)
        at: list[int] = []
        for s, value in self.changes[name]:
            if s < stamp:
                before = value
            elif s == stamp:
                at.append(value)
        return [before, *at]

    def _ledger_governance(self, where: str, ev: dict[str, Any], ts: int) -> None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("GovernanceBody", body, where)
        if canon is None:
            return
        cid = H(canon)
        if ev["change_id"] != cid:
            self.sec.problem("BAD_ID", where, f"change_id {ev['change_id']} but H(body) is {cid}")
        self._unique(self.change_ids, cid, where, "governance change id")
        self._role_signer(ev, "treasury", self.g.energy.treasury, where, "governance")
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "governance")
        name, value, stamp = body["parameter"], body["value"], ev["stamp_height"]
        if ev["seq"] != self.gov_seq + 1 or stamp < self.gov_stamp:
            self.sec.problem("BAD_EVENT", where, f"governance seq {ev['seq']} at height {stamp} does not follow "
                                                 f"seq {self.gov_seq} at height {self.gov_stamp}")
        self.gov_seq, self.gov_stamp = ev["seq"], max(stamp, self.gov_stamp)
        self._timestamp(ts, body["timestamp"], where)
        if name not in PARAMETERS:
            self.sec.problem("UNKNOWN_PARAMETER", where, f"governance: no parameter {name!r}")
            return
        why = out_of_range(name, value)
        if why is not None:
            self.sec.problem("BAD_PARAMETER", where, f"governance: {why}")
        history = self.changes[name]
        previous = history[-1][1] if history else PARAMETERS[name].initial(self.g)
        if ev["previous"] != previous:
            self.sec.problem("BAD_EVENT", where, f"governance: previous {ev['previous']}, but {name} was {previous}")
        history.append((stamp, value))

    # -- key rotations (docs/PROTOCOL.md §8) ---------------------------------------------------
    def _identity(self, role: str, pubkey: str, stamp: int, block: bool = False) -> str | None:
        """The identity ``pubkey`` signs for in ``role`` for an event stamped ``stamp`` (a block:
        at height ``stamp``). A rotation stamped s is in force from block s+1; events stamped s
        itself may carry either key (their order within a height is not kept)."""
        span = self.role_keys.get((role, pubkey))
        if span is None:
            try:
                return genesis_identity(self.g, role, pubkey)
            except ValueError:
                return None
        identity, first, last = span
        inside = first < stamp <= last if block else first <= stamp <= last
        return identity if inside else None

    def _role_signer(self, ev: dict[str, Any], role: str, identity: str, where: str, what: str) -> None:
        if self._identity(role, ev["pubkey"], ev["stamp_height"]) != identity:
            self.sec.problem("BAD_SIGNATURE", where, f"{what}: pubkey is not the {role} key of {identity}")

    def _ledger_keys(self, where: str, ev: dict[str, Any], ts: int) -> None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("KeyRotationBody", body, where)
        if canon is None:
            return
        rid = H(canon)
        if ev["rotation_id"] != rid:
            self.sec.problem("BAD_ID", where, f"rotation_id {ev['rotation_id']} but H(body) is {rid}")
        self._unique(self.rotation_ids, rid, where, "rotation id")
        role, old, new, stamp = body["role"], body["old_pubkey"], body["new_pubkey"], ev["stamp_height"]
        if ev["pubkey"] != old:
            self.sec.problem("BAD_SIGNATURE", where, "rotation: pubkey is not body.old_pubkey")
        self.sigs.add(old, canon, ev["signature"], where, "rotation (old key)")
        self.sigs.add(new, canon, ev["new_signature"], where, "rotation (new key)")
        if role == "log" and not any(r == "log" for r, _ in self.role_keys):
            # the first log key is in no genesis: auditors pin it (PROTOCOL.md §9); its first
            # rotation names it, and every later one must start from the key before
            self.role_keys[(role, old)] = [ev["identity"], 0, _NEVER]
        identity = self._identity(role, old, stamp)
        if identity is None or identity != ev["identity"]:
            self.sec.problem("BAD_ROTATION", where, f"rotation: {old} does not hold {role} for {ev['identity']}")
        if (role, new) in self.role_keys or self._identity(role, new, stamp) is not None:
            self.sec.problem("BAD_ROTATION", where, f"rotation: {new} held the {role} role already")
        self.role_keys[(role, old)] = [ev["identity"], self.role_keys.get((role, old), [None, 0])[1], stamp]
        self.role_keys[(role, new)] = [ev["identity"], stamp, _NEVER]
        self._timestamp(ts, body["timestamp"], where)

    def _ledger_admin(self, where: str, ev: dict[str, Any], ts: int) -> None:
        if ev["outcome"] not in ("ok", "error"):
            self.sec.problem("BAD_EVENT", where, f"outcome {ev['outcome']!r} is neither ok nor error")
        self._timestamp(ts, ev["timestamp"], where)

    # -- cross references -------------------------------------------------------------------
    def _cross_checks(self) -> None:
        fees: dict[int, int] = {}
        for txid, (h, i, block_hash) in self.block_txids.items():
            found = self.confirmed.pop(txid, None)
            if found is None:
                self.sec.problem("MISSING_TX", self.blocks[h][3], f"txid {txid} (index {i}) is not on {T.TRANSACTIONS}")
                continue
            if found[:3] != (h, i, block_hash):
                self.sec.problem("TX_MISMATCH", found[4], f"txid {txid} says height {found[0]} index {found[1]} "
                                                          f"block {found[2]}; the block has it at height {h} index {i}")
            fees[h] = fees.get(h, 0) + found[3]
        for txid, found in self.confirmed.items():
            self.sec.problem("ORPHAN_TX", found[4], f"txid {txid} is confirmed but no block lists it")
        for h, (_hash, _producer, block_fees, where) in self.blocks.items():
            if block_fees != fees.get(h, 0):
                self.sec.problem("BAD_FEES", where, f"fees {block_fees}, its transactions pay {fees.get(h, 0)}")
        if self.pruned is not None:  # providers registered below the prune: the anchor has them
            for pid in {pid for pid, _w in self.readings} | {s[0] for s in self.settlements.values()}:
                if pid not in self.providers and (owner := self.pruned.provider_owner(pid)) is not None:
                    self.providers[pid] = owner
        for pid, where in self.readings:
            if pid not in self.providers:
                self.sec.problem("UNKNOWN_PROVIDER", where, f"reading for unregistered provider {pid!r}")
        for sid, (pid, owner, where) in self.settlements.items():
            if pid not in self.providers:
                self.sec.problem("UNKNOWN_PROVIDER", where, f"settlement {sid!r} for unregistered provider {pid!r}")
            elif self.providers[pid] != owner:
                self.sec.problem("BAD_EVENT", where, f"settlement {sid!r} pays {owner}, provider {pid!r} "
                                                     f"is owned by {self.providers[pid]}")
        for pid, (round_height, where) in self.payouts.items():
            block = self.blocks.get(round_height)
            if block is None and self.pruned is not None:  # a round below the prune: the anchor has it
                producer = self.pruned.block_producer(round_height)
                block = ("", producer, 0, "") if producer is not None else None
            if block is None or block[1] != self.g.pool.address:
                self.sec.problem("BAD_ROUND", where, f"payout {pid!r}: height {round_height} is not a pool block")
        if self.log.atomic_state:
            raw = self.log.state_get(b"tip")
            tip = intjson.loads(raw) if raw else None
            if tip is None or tip[0] != self.height or tip[1] != self.tip_hash:
                self.sec.problem("WRITE_STATE_MISMATCH", "write-side tip",
                                 f"write-side tip {tip and tip[:2]} is not the last block on the log "
                                 f"({self.height}, {self.tip_hash})")


