"""The admission rules of PROTOCOL.md §5, in its check order. ``Rules.admit`` either returns the
events a line becomes (and has changed the state's line overlay) or raises a Rejection."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .. import topics as T
from ..avro_codegen import long_bytes
from ..crypto import H, address_of, address_of_hex, tx_root, verify
from ..errors import Code, Rejection
from ..genesis import Genesis
from ..governance import PARAMETERS, out_of_range
from ..movements import confirmed_nonce, movements
from .encoding import share_event, signed_event
from .lines import I64, BlockLine, Item, RotationLine, ShareLine, Signed, SignedLine
from .roles import genesis_identity, identity_of
from .state import Account, Tip, WriteState
from .verify import SignatureCache

__all__ = ["Out", "Rules"]


class Out(NamedTuple):  # a tuple: one per admitted event, and a frozen dataclass costs 4x
    """One event to append: topic, partition key, event record (None when ``value`` is given),
    record timestamp."""

    topic: str
    key: str
    event: dict[str, Any] | None
    timestamp: int
    #: the event's Avro bytes when already made from parts at hand (``encoding.py``); else None
    encoded: bytes | None = None
    #: the whole record value (wire format) and its Merkle leaf hash, when a worker made them
    value: bytes | None = None
    leaf: bytes | None = None


def _signed_out(topic: str, key: str, s: Signed, event: dict[str, Any], timestamp: int) -> Out:
    """The Out of an event whose first field is ``s``'s body, encoded from its canonical bytes."""
    return Out(topic, key, event, timestamp, signed_event(topic, s.canonical(), event))


def _dup(what: str) -> Rejection:
    return Rejection(Code.DUPLICATE, f"{what} was already admitted")


class Rules:
    def __init__(self, genesis: Genesis, state: WriteState, signatures: SignatureCache | None = None) -> None:
        self.g = genesis
        self.st = state
        self.signatures = signatures or SignatureCache()

    # -- shared checks --------------------------------------------------------------------
    def _chain(self, chain_id: str, where: str) -> None:
        if chain_id != self.g.chain_id:
            raise Rejection(Code.WRONG_CHAIN, f"{where}: chain_id {chain_id!r} is not {self.g.chain_id!r}")

    def _signature(self, s: Signed, signer: str | None, where: str) -> None:
        """The signature verifies and, when ``signer`` is given, the key is that address's."""
        ok = s.sig_ok
        if ok is None and self.signatures.verified(s):
            ok = s.sig_ok = True
        if ok is None:
            ok = s.sig_ok = verify(bytes.fromhex(s.pubkey), s.canonical(), bytes.fromhex(s.signature))
        if not ok:
            raise Rejection(Code.BAD_SIGNATURE, f"{where}: signature does not verify")
        if signer is not None and address_of_hex(s.pubkey) != signer:
            raise Rejection(Code.BAD_SIGNATURE, f"{where}: pubkey is not the key of {signer}")

    def _given_id(self, kind: str, ident: str, s: Signed, what: str) -> str:
        """The body's hash, once ``ident`` (given in the body, so known before its canonical bytes)
        is neither a DUPLICATE nor a CONFLICT: those come first (PROTOCOL §5), also for a body
        with an integer out of range (BAD_AMOUNT otherwise), which no admitted body can equal."""
        seen = self.st.seen(kind, ident)
        if seen is not None:
            try:
                same = H(s.canonical()) == seen
            except Rejection as rej:
                if rej.code is not Code.BAD_AMOUNT:
                    raise
                same = False
            if same:
                raise _dup(f"{what} {ident!r}")
            raise Rejection(Code.CONFLICT, f"{what} {ident!r} was admitted with a different body")
        return H(s.canonical())

    def _positive(self, body: dict[str, Any], *fields: str, where: str = "body") -> None:
        for f in fields:
            if body[f] <= 0:
                raise Rejection(Code.BAD_AMOUNT, f"{where}.{f} must be positive, got {body[f]}")

    def _role_signer(self, s: Signed, role: str, identity: str, where: str) -> None:
        """The signature verifies and the key currently signs for ``identity`` in ``role``."""
        self._signature(s, None, where)
        if identity_of(self.st, self.g, role, s.pubkey) != identity:
            raise Rejection(Code.BAD_SIGNATURE, f"{where}: pubkey is not the {role} key of {identity}")

    def _funds(self, address: str, need: int, what: str) -> None:
        have = self.st.spendable(address)
        if have < need:
            raise Rejection(Code.INSUFFICIENT_FUNDS, f"{what}: {address} can spend {have}, needs {need}")

    def _apply(self, topic: str, event: dict[str, Any], accounts: dict[str, Account] | None = None) -> None:
        """Apply the shared movement rules to the state (or to a block's running accounts)."""
        for addr, d_bal, d_staked in movements(topic, event, self.g):
            acct = accounts[addr] if accounts is not None and addr in accounts else self.st.account(addr)
            acct = Account(acct.balance + d_bal, acct.staked + d_staked, acct.nonce)
            if accounts is not None:
                accounts[addr] = acct
            else:
                self.st.set_account(addr, acct)
        nonce = confirmed_nonce(topic, event)
        if nonce is not None and accounts is not None:
            addr, n = nonce
            accounts[addr] = Account(accounts[addr].balance, accounts[addr].staked, max(accounts[addr].nonce, n))

    # -- dispatch ---------------------------------------------------------------------------
    def prefetch(self, items: list[Item | Rejection]) -> None:
        """Read ahead, in one call, the state a chunk's shares look up (whether each id was
        admitted before): a lookup per share was most of the rules' time on share chunks."""
        seen_key = self.st.seen_key
        self.st.prefetch([seen_key("s", it.id) for it in items if isinstance(it, ShareLine)])

    def admit(self, item: Item) -> list[Out]:
        if isinstance(item, BlockLine):
            return self.block(item)
        if isinstance(item, ShareLine):
            return self.share(item)
        if isinstance(item, RotationLine):
            return self.rotation(item)
        assert isinstance(item, SignedLine)
        rule: Callable[[Signed], list[Out]] = getattr(self, item.kind)
        return rule(item.signed)

    # -- blocks -----------------------------------------------------------------------------
    def block(self, b: BlockLine) -> list[Out]:
        hdr = b.header.body
        self._chain(hdr["chain_id"], "header")
        block_hash = b.header.id
        tip = self.st.tip()
        height = hdr["height"]
        if 1 <= height <= tip.height:
            have = self.st.block_hash(height)
            if have == block_hash:
                raise _dup(f"block {block_hash} at height {height}")
            raise Rejection(Code.CONFLICT, f"height {height} already has block {have}")
        self._signature(b.header, None, "header")
        identity = identity_of(self.st, self.g, "producer", b.header.pubkey)
        if identity is None:  # v1's order: a key that is not the producer's is BAD_SIGNATURE first
            if address_of(bytes.fromhex(b.header.pubkey)) != hdr["producer"]:
                raise Rejection(Code.BAD_SIGNATURE, f"header: pubkey is not the key of {hdr['producer']}")
            raise Rejection(Code.UNKNOWN_PRODUCER, f"producer key {b.header.pubkey} is not in genesis "
                                                   "(or was retired by a key rotation)")
        if identity != hdr["producer"]:
            raise Rejection(Code.BAD_SIGNATURE, f"header: pubkey is not the key of {hdr['producer']}")
        if height != tip.height + 1:
            raise Rejection(Code.BAD_HEIGHT, f"height {height}, expected {tip.height + 1}")
        if hdr["prev_hash"] != tip.hash:
            raise Rejection(Code.BAD_PREV_HASH, f"prev_hash {hdr['prev_hash']} is not the tip {tip.hash}")
        if hdr["timestamp"] <= tip.timestamp:
            raise Rejection(Code.BAD_TIMESTAMP, f"timestamp {hdr['timestamp']} is not after {tip.timestamp}")
        txids = [t.id for t in b.transactions]
        if hdr["tx_count"] != len(txids):
            raise Rejection(Code.BAD_TX_ROOT, f"tx_count {hdr['tx_count']} but {len(txids)} transactions")
        root = tx_root(txids) if b.root is None else b.root
        if root != hdr["tx_root"]:
            raise Rejection(Code.BAD_TX_ROOT, f"tx_root {hdr['tx_root']} but transactions give {root}")

        accounts: dict[str, Account] = {}
        outs: list[Out] = []
        fees = 0
        account = self.st.account
        for i, (tx, txid) in enumerate(zip(b.transactions, txids)):
            body = tx.body
            where = f"transaction {i} ({txid[:16]})"
            self._check_tx(tx, where)
            sender, recipient, amount, fee = body["sender"], body["recipient"], body["amount"], body["fee"]
            acct = accounts.get(sender) or account(sender)
            if body["nonce"] != acct.nonce + 1:
                raise Rejection(Code.BAD_NONCE, f"{where}: nonce {body['nonce']}, expected {acct.nonce + 1}")
            if acct.balance < amount + fee:
                raise Rejection(Code.INSUFFICIENT_FUNDS,
                                f"{where}: {sender} has {acct.balance}, needs {amount + fee}")
            # movements() of a confirmed transaction (sender, then recipient), then its nonce
            accounts[sender] = Account(acct.balance - (amount + fee), acct.staked, max(acct.nonce, body["nonce"]))
            to = accounts.get(recipient) or account(recipient)
            accounts[recipient] = Account(to.balance + amount, to.staked, to.nonce)
            fees += fee
            # the event but its body, which its canonical bytes give (listeners read topics and timestamps)
            rest = {"txid": txid, "pubkey": tx.pubkey, "signature": tx.signature, "height": height, "index": i,
                    "block_hash": block_hash}
            outs.append(Out(T.TRANSACTIONS, sender, None, body["timestamp"], signed_event(T.TRANSACTIONS, tx.canonical(), rest)))

        if fees > I64[1]:  # each fee is in range; their sum is the block event's `fees` (PROTOCOL §7)
            raise Rejection(Code.BAD_AMOUNT, f"the transactions' fees sum to {fees}, outside the signed 64-bit range")
        block_ev = {"header": hdr, "hash": block_hash, "pubkey": b.header.pubkey,
                    "signature": b.header.signature, "txids": txids, "fees": fees,
                    "reward": self.g.block_reward, "evicted": []}
        self._apply(T.BLOCKS, block_ev, accounts)
        for addr, acct in accounts.items():
            self.st.set_account(addr, acct)
        block_ev["evicted"] = self._settle_mempool(set(txids), {t.body["sender"] for t in b.transactions})
        self.st.set_tip(Tip(height, block_hash, hdr["timestamp"]))
        self.st.set_block_hash(height, block_hash)
        if hdr["producer"] == self.g.pool.address:
            self.st.set_pool_round(height, self.g.block_reward + fees, 0)
        return [_signed_out(T.BLOCKS, self.g.chain_id, b.header, block_ev, hdr["timestamp"]), *outs]

    def _check_tx(self, tx: Signed, where: str) -> None:
        body = tx.body
        self._chain(body["chain_id"], where)
        self._signature(tx, body["sender"], where)
        self._positive(body, "amount", where=where)
        if body["fee"] < self.g.min_fee:
            raise Rejection(Code.FEE_TOO_LOW, f"{where}: fee {body['fee']} is below min_fee {self.g.min_fee}")

    def _settle_mempool(self, confirmed: set[str], senders: set[str]) -> list[str]:
        """After a block: confirmed txs leave the mempool; pending txs of its senders that can no
        longer apply (stale nonce, gap, or unaffordable) are evicted. Returns evicted txids."""
        st = self.st
        pending_of = {sender: st.pending(sender) for sender in sorted(senders)}
        # a txid is in the mempool iff it is pending under its sender (one get per sender, not per tx)
        pending = {txid for entries in pending_of.values() for _, txid, _ in entries}
        for txid in confirmed:
            if txid in pending:
                st.set_mempool_tx(txid, None)
            st.set_tx_status(txid, "c")
        evicted = []
        for sender, entries in pending_of.items():
            if not entries:
                continue  # nothing pending: nothing to keep or evict
            acct = st.account(sender)
            keep, budget, expected = [], acct.balance, acct.nonce + 1
            for nonce, txid, cost in entries:
                if txid in confirmed:
                    continue
                if nonce == expected and cost <= budget:
                    keep.append((nonce, txid, cost))
                    budget -= cost
                    expected += 1
                else:
                    evicted.append(txid)
                    st.set_tx_status(txid, "e")
                    st.set_mempool_tx(txid, None)
            if len(keep) != len(entries):
                st.set_pending(sender, tuple(keep))
        return evicted

    # -- mempool ----------------------------------------------------------------------------
    def transaction(self, tx: Signed) -> list[Out]:
        body = tx.body
        self._chain(body["chain_id"], "body")
        txid = tx.id
        if self.st.tx_status(txid) is not None:
            raise _dup(f"transaction {txid}")
        self._check_tx(tx, "body")
        sender = body["sender"]
        pending = self.st.pending(sender)
        expected = self.st.account(sender).nonce + len(pending) + 1
        if body["nonce"] != expected:
            raise Rejection(Code.BAD_NONCE, f"nonce {body['nonce']}, expected {expected}")
        cost = body["amount"] + body["fee"]
        self._funds(sender, cost, "transaction")
        self.signatures.remember(tx)  # admitted: a block confirming it skips the verification
        self.st.set_pending(sender, (*pending, (body["nonce"], txid, cost)))
        self.st.set_tx_status(txid, "m")
        self.st.set_mempool_tx(txid, {"type": "transaction", **tx.signed_record()})
        event = {**tx.signed_record(), "txid": txid, "stamp_height": self.st.tip_height()}
        return [_signed_out(T.MEMPOOL, sender, tx, event, body["timestamp"])]

    # -- shares -----------------------------------------------------------------------------
    def share(self, s: ShareLine) -> list[Out]:
        share_id = s.id
        if self.st.seen("s", share_id) is not None:
            raise _dup(f"share {share_id}")
        o = s.obj
        if o["difficulty"] <= 0:
            raise Rejection(Code.BAD_AMOUNT, f"difficulty must be positive, got {o['difficulty']}")
        if s.value is None:  # a share made ahead was in range
            for f in ("height", "difficulty", "timestamp"):
                if not -(1 << 63) <= o[f] < (1 << 63):
                    raise Rejection(Code.BAD_AMOUNT, f"share.{f} is outside the signed 64-bit range")
        self.st.mark_seen("s", share_id, share_id)
        stamp = self.st.tip_height()
        value = s.value
        if value is not None:  # made ahead for stamp height s.stamp: it needs another end if that was wrong
            if stamp == s.stamp:
                return [Out(T.SHARES, s.address, None, o["timestamp"], None, value, s.leaf)]
            value = share_event(value[:-len(long_bytes(s.stamp))], stamp)
            return [Out(T.SHARES, s.address, None, o["timestamp"], None, value)]
        event = {"share_id": share_id, "worker": o["worker"], "address": s.address, "job_id": o["job_id"],
                 "height": o["height"], "difficulty": o["difficulty"], "accepted": o["accepted"],
                 "timestamp": o["timestamp"], "stamp_height": stamp}
        return [Out(T.SHARES, s.address, event, o["timestamp"])]

    # -- energy -----------------------------------------------------------------------------
    def reading(self, r: Signed) -> list[Out]:
        body = r.body
        self._chain(body["chain_id"], "body")
        reading_id = r.id
        if self.st.seen("r", reading_id) is not None:
            raise _dup(f"reading {reading_id}")
        self._signature(r, None, "reading")
        if identity_of(self.st, self.g, "oracle", r.pubkey) is None:
            raise Rejection(Code.UNKNOWN_ORACLE, f"oracle key {r.pubkey} is not in genesis "
                                                 "(or was retired by a key rotation)")
        self._positive(body, "milli_kwh")
        prov = self._provider(body["provider_id"])
        if prov["meter_id"] != body["meter_id"]:
            raise Rejection(Code.UNKNOWN_PROVIDER,
                            f"meter {body['meter_id']!r} is not provider {body['provider_id']!r}'s meter")
        self.st.set_provider(body["provider_id"], {**prov, "credited": prov["credited"] + body["milli_kwh"]})
        self.st.mark_seen("r", reading_id, reading_id)
        event = {**r.signed_record(), "reading_id": reading_id, "stamp_height": self.st.tip_height()}
        return [_signed_out(T.READINGS, body["provider_id"], r, event, body["timestamp"])]

    def _provider(self, provider_id: str) -> dict[str, Any]:
        prov = self.st.provider(provider_id)
        if prov is None:
            raise Rejection(Code.UNKNOWN_PROVIDER, f"no provider {provider_id!r} is registered")
        return prov

    def provider(self, p: Signed) -> list[Out]:
        body = p.body
        self._chain(body["chain_id"], "body")
        pid = body["provider_id"]
        body_hash = self._given_id("v", pid, p, "provider")
        self._signature(p, body["owner"], "provider")
        self._positive(body, "stake", "price_per_kwh")
        min_stake = self.st.parameter("min_stake", self.g)  # as governance left it (§8.5)
        if body["stake"] < min_stake:
            raise Rejection(Code.STAKE_TOO_LOW, f"stake {body['stake']} is below min_stake {min_stake}")
        max_price = self.st.parameter("max_price_per_kwh", self.g)
        if body["price_per_kwh"] > max_price:
            raise Rejection(Code.PRICE_TOO_HIGH,
                            f"price_per_kwh {body['price_per_kwh']} is above max_price_per_kwh {max_price}")
        self._funds(body["owner"], body["stake"], "stake")
        event = {**p.signed_record(), "stamp_height": self.st.tip_height()}
        self._apply(T.PROVIDERS, event)
        self.st.mark_seen("v", pid, body_hash)
        self.st.set_provider(pid, {"owner": body["owner"], "meter_id": body["meter_id"],
                                   "price_per_kwh": body["price_per_kwh"], "credited": 0, "settled": 0})
        return [_signed_out(T.PROVIDERS, pid, p, event, body["timestamp"])]

    def settlement(self, s: Signed) -> list[Out]:
        body = s.body
        self._chain(body["chain_id"], "body")
        sid = body["settlement_id"]
        body_hash = self._given_id("t", sid, s, "settlement")
        self._role_signer(s, "treasury", self.g.energy.treasury, "settlement")
        self._positive(body, "milli_kwh", "amount")
        prov = self._provider(body["provider_id"])
        unsettled = prov["credited"] - prov["settled"]
        if body["milli_kwh"] > unsettled:
            raise Rejection(Code.OVER_SETTLEMENT, f"milli_kwh {body['milli_kwh']} > unsettled {unsettled}")
        due = body["milli_kwh"] * prov["price_per_kwh"] // 1000
        if body["amount"] != due:
            raise Rejection(Code.OVER_SETTLEMENT, f"amount {body['amount']} != milli_kwh * price // 1000 = {due}")
        self._funds(self.g.energy.treasury, body["amount"], "settlement")
        event = {**s.signed_record(), "owner": prov["owner"], "stamp_height": self.st.tip_height()}
        self._apply(T.SETTLEMENTS, event)
        self.st.mark_seen("t", sid, body_hash)
        self.st.set_provider(body["provider_id"], {**prov, "settled": prov["settled"] + body["milli_kwh"]})
        return [_signed_out(T.SETTLEMENTS, body["provider_id"], s, event, body["timestamp"])]

    # -- pool payouts -----------------------------------------------------------------------
    def payout(self, p: Signed) -> list[Out]:
        body = p.body
        self._chain(body["chain_id"], "body")
        pid = body["payout_id"]
        body_hash = self._given_id("p", pid, p, "payout")
        self._role_signer(p, "pool", self.g.pool.address, "payout")
        self._positive(body, "amount")
        rnd = self.st.pool_round(body["round_height"])
        if rnd is None:
            raise Rejection(Code.BAD_ROUND, f"height {body['round_height']} is not a block of the pool")
        cap, paid = rnd
        if paid + body["amount"] > cap:
            raise Rejection(Code.BAD_ROUND, f"round {body['round_height']} pays {paid} of {cap}; "
                                            f"{body['amount']} more would exceed it")
        self._funds(self.g.pool.address, body["amount"], "payout")
        event = {**p.signed_record(), "stamp_height": self.st.tip_height()}
        self._apply(T.PAYOUTS, event)
        self.st.mark_seen("p", pid, body_hash)
        self.st.set_pool_round(body["round_height"], cap, paid + body["amount"])
        return [_signed_out(T.PAYOUTS, body["address"], p, event, body["timestamp"])]

    # -- governance (docs/PROTOCOL.md §8.5) -------------------------------------------------
    def governance(self, c: Signed) -> list[Out]:
        """A market parameter changed by the current treasury key, in force from now on."""
        body = c.body
        self._chain(body["chain_id"], "body")
        change_id = c.id
        if self.st.seen("g", change_id) is not None:
            raise _dup(f"governance change {change_id}")
        self._role_signer(c, "treasury", self.g.energy.treasury, "governance")
        name, value = body["parameter"], body["value"]
        if name not in PARAMETERS:
            raise Rejection(Code.UNKNOWN_PARAMETER, f"governance: no parameter {name!r} "
                                                    f"(the parameters are {', '.join(PARAMETERS)})")
        why = out_of_range(name, value)
        if why is not None:
            raise Rejection(Code.BAD_PARAMETER, f"governance: {why}")
        previous = self.st.parameter(name, self.g)
        seq = self.st.governance_seq() + 1
        self.st.set_parameter(name, value, seq)
        self.st.set_governance_seq(seq)
        self.st.mark_seen("g", change_id, change_id)
        event = {**c.signed_record(), "change_id": change_id, "previous": previous, "seq": seq,
                 "stamp_height": self.st.tip_height()}
        return [_signed_out(T.GOVERNANCE, name, c, event, body["timestamp"])]

    # -- key rotations (docs/PROTOCOL.md §8) ------------------------------------------------
    def rotation(self, r: RotationLine) -> list[Out]:
        s, body = r.signed, r.signed.body
        self._chain(body["chain_id"], "body")
        rotation_id = s.id
        if self.st.seen("k", rotation_id) is not None:
            raise _dup(f"key rotation {rotation_id}")
        role, old, new = body["role"], body["old_pubkey"], body["new_pubkey"]
        if s.pubkey != old:
            raise Rejection(Code.BAD_SIGNATURE, "rotation: pubkey must be the old key (body.old_pubkey)")
        self._signature(s, None, "rotation")
        if not verify(bytes.fromhex(new), s.canonical(), bytes.fromhex(r.new_signature)):
            raise Rejection(Code.BAD_SIGNATURE, "rotation: new_signature does not verify with new_pubkey")
        identity = identity_of(self.st, self.g, role, old)
        if identity is None:
            code = {"producer": Code.UNKNOWN_PRODUCER, "oracle": Code.UNKNOWN_ORACLE}.get(role, Code.BAD_SIGNATURE)
            raise Rejection(code, f"rotation: {old} does not hold the {role} role now")
        if new == old or self.st.role_key(role, new) is not None or genesis_identity(self.g, role, new):
            raise Rejection(Code.BAD_ROTATION, f"rotation: {new} holds or held the {role} role already")
        self.st.set_role_key(role, old, identity, False)
        self.st.set_role_key(role, new, identity, True)
        self.st.mark_seen("k", rotation_id, rotation_id)
        event = {**s.signed_record(), "rotation_id": rotation_id, "new_signature": r.new_signature,
                 "identity": identity, "stamp_height": self.st.tip_height()}
        return [_signed_out(T.KEYS, role, s, event, body["timestamp"])]
