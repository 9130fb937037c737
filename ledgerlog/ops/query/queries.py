"""Queries answered from projections, each answer carrying its provenance: the projection and
version, the log positions and height it reflects, and how many records it is behind."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ledgerlog import __version__
from ledgerlog.engine.crypto import tx_branch
from ledgerlog.engine.errors import BadRequest, NotFoundError
from ledgerlog.engine.genesis import ADDRESS_RE
from ledgerlog.engine.treehead import HeadPublisher
from ledgerlog.ops.query import userviews
from ledgerlog.ops.query.proofs import LogProofs
from ledgerlog.ops.query.series import COIN_DECIMALS, SERIES_BLOCKS, Samples, block_series
from ledgerlog.projections import balances, chainstate, energy, payouts
from ledgerlog.streams.runner import Runner

#: the dashboard's ranked lists (richest, top workers and providers) may lag the state this long
RANK_SECONDS = 2.0

__all__ = ["Queries", "ADDRESS_RE", "I64_MAX", "check_account", "MAX_PROVIDER_ID", "PROVIDERS_PAGE", "PROVIDERS_PAGE_MAX",
           "BadRequest", "bad_request"]

I64_MAX = (1 << 63) - 1  # heights, like every event integer, are signed 64-bit (PROTOCOL.md §7)


#: providers a page of ``GET /v1/energy/providers`` holds by default, and at most
PROVIDERS_PAGE, PROVIDERS_PAGE_MAX = 100, 1000
MAX_PROVIDER_ID = 256  # characters (engine/admission/lines.py)
DASHBOARD_KEYS = 8  # keys the dashboard shows of each user projection ...
DASHBOARD_VALUE_CHARS = 200  # ... and of each value, at most this many characters


def bad_request(message: str) -> BadRequest:
    return BadRequest(message)


def _check_height(height: int | None) -> None:
    if height is not None and not 0 <= height <= I64_MAX:
        raise bad_request(f"height must be between 0 and {I64_MAX}")


def check_account(address: str, height: int | None) -> None:
    """BadRequest unless ``address`` is an address and ``height``, if any, a height: what an
    account query (the node's, or a sharded worker's) takes."""
    if not ADDRESS_RE.match(address):
        raise bad_request(f"{address[:80]!r} is not a 40-hex address")
    _check_height(height)


def _at(height: int | None) -> dict[str, int]:
    """The ``height`` an as-of answer was asked for (nothing for answers about now)."""
    return {} if height is None else {"height": height}


class Queries:
    def __init__(self, runner: Runner, chain_id: str, instance: str | None = None,
                 heads: HeadPublisher | None = None, log_pubkey: str | None = None,
                 syncing_lag: int = 10_000, jobs: Callable[[], dict[str, Any]] | None = None) -> None:
        self.runner = runner
        self.chain_id = chain_id
        self.instance = instance  # a running node's random id (node.json names it); None in the CLI
        self.log_pubkey = log_pubkey  # the key signing the tree heads now
        proofs = LogProofs(runner.log, heads)  # PROTOCOL.md §9: answered from the log, no projection
        self.inclusion_proof, self.consistency_proof, self.tree_head = (
            proofs.inclusion_proof, proofs.consistency_proof, proofs.tree_head)
        self.syncing_lag = syncing_lag  # records of lag above which status says "syncing" (http.ready_max_lag)
        self.jobs = jobs  # a node's long admin actions (ops/jobs.py Jobs.to_dict); None in the CLI
        self.samples = Samples()  # per-height figures no projection keeps; a running node fills it (sample)
        self._ranks: dict[tuple[str, str], tuple[tuple[str, int], float, Any]] = {}  # dashboard walks (_ranked)
        self.clock: Callable[[], float] = time.monotonic

    # -- read-your-writes ------------------------------------------------------------------------
    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until projections reflect everything appended before this call."""
        log = self.runner.log
        targets = {t: log.end_offsets(t) for t in log.topics()}
        return self.runner.wait_caught_up(targets, timeout)

    def caught_up(self, names: Iterable[str] | None = None) -> bool:
        """Without waiting: have the projections ``names`` (default: all) folded everything
        appended so far? (What ``sync`` waits for, as a check; cheap on the embedded log, whose
        end offsets are in memory.)"""
        log = self.runner.log
        handles = self.runner.handles
        for h in (handles.values() if names is None else (handles[n] for n in names)):
            pos = h.store.positions()
            for t in h.module.TOPICS:
                for p, end in enumerate(log.end_offsets(t)):
                    if pos.get((t, p), 0) < end:
                        return False
        return True

    def _view(self, name: str):
        return self.runner.check_usable(name).store.view()

    def provenance(self, name: str) -> dict[str, Any]:
        """Projection, version, height, positions (topic -> offset per partition), lag (records
        not folded yet) and digest; positions and lag from one read of the stored positions."""
        h = self.runner.handles[name]
        log = self.runner.log
        pos = h.store.positions()
        positions: dict[str, list[int]] = {}
        lag = 0
        for t in h.module.TOPICS:
            ends = log.end_offsets(t)
            row = positions[t] = [pos.get((t, p), 0) for p in range(len(ends))]
            lag += sum(ends) - sum(row)
        return {"projection": name, "version": h.version, "height": h.store.height,
                "positions": positions, "lag": lag, "digest": h.store.digest_hex()}

    # -- answers ---------------------------------------------------------------------------------
    def failed(self) -> dict[str, dict[str, Any]]:
        """Projections whose fold stopped on an event: where, the error and the fix."""
        return {n: f.to_dict() for n, f in self.runner.failures().items()}

    def status(self) -> dict[str, Any]:
        tip = chainstate.tip(self._view("chainstate"))
        lag = self.runner.lag()
        out = {"chain_id": self.chain_id, **tip, "mempool": chainstate.mempool_size(self._view("chainstate")),
               "lag": lag, "syncing": any(v > self.syncing_lag for v in lag.values()),
               "failed_projections": self.failed(), "provenance": self.provenance("chainstate"),
               "version": __version__, "pruned": self.pruned()}
        if self.instance is not None:
            out["instance"] = self.instance
        out["log_pubkey"] = self.log_pubkey
        if self.jobs is not None:
            out["jobs"] = self.jobs()
        return out

    # -- a pruned log (engine/prunepoint.py): nothing below its prune height is served -------------
    def _below_prune(self, height: int, what: str) -> None:
        """PrunedError (410 PRUNED) when ``height`` lies below the log's prune height."""
        point = self.runner.log.prune_point()
        if point is not None and height < point.height:
            raise point.error(what)

    def _as_of(self, height: int | None, what: str) -> None:
        """Check an as-of ``height`` (BAD_REQUEST out of range; PRUNED below the prune height)."""
        _check_height(height)
        if height is not None:
            self._below_prune(height, f"{what} as of height {height}")

    def pruned(self) -> dict[str, Any] | None:
        """Where the log was pruned (height, archive, tip below it), None if it never was."""
        point = self.runner.log.prune_point()
        return point.to_dict() if point is not None else None

    def account(self, address: str, height: int | None = None) -> dict[str, Any]:
        check_account(address, height)
        if height is not None:
            self._below_prune(height, f"the balance of {address} at height {height}")
        return {**balances.account(self._view("balances"), address, height),
                "provenance": self.provenance("balances")}

    def block(self, height_or_hash: str) -> dict[str, Any]:
        if height_or_hash.isdigit() and (not height_or_hash.isascii() or len(height_or_hash.lstrip("0")) > 19
                                         or int(height_or_hash) > I64_MAX):
            raise bad_request(f"a block height is a decimal between 0 and {I64_MAX}")
        if height_or_hash.isdigit():
            self._below_prune(int(height_or_hash), f"block {height_or_hash}")
        found = chainstate.block(self._view("chainstate"), height_or_hash)
        if found is None:
            raise NotFoundError(f"no block {height_or_hash}")
        self._below_prune(found["height"], f"block {found['hash']} (height {found['height']})")
        return {**found, "provenance": self.provenance("chainstate")}

    def tx(self, txid: str) -> dict[str, Any]:
        found = chainstate.tx(self._view("chainstate"), txid)
        if found is None:
            raise NotFoundError(f"no transaction {txid}")
        self._below_tx(found)
        return {**found, "provenance": self.provenance("chainstate")}

    def _below_tx(self, found: dict[str, Any]) -> None:
        """A transaction confirmed (or evicted, submitted) below the prune height; a pending one
        is the mempool's current state, whatever its height."""
        if found["status"] == "pending":
            return
        height = found["height"] if found["status"] == "confirmed" else found["stamp_height"]
        self._below_prune(height, f"transaction {found['txid']} ({found['status']} at height {height})")

    def tx_proof(self, txid: str) -> dict[str, Any]:
        """That a confirmed transaction is in its block (PROTOCOL.md §9): the branch from its txid
        to the block header's tx_root."""
        view = self._view("chainstate")
        found = chainstate.tx(view, txid)
        if found is None or found["status"] != "confirmed":
            raise NotFoundError(f"no confirmed transaction {txid}")
        self._below_tx(found)
        blk = chainstate.block(view, found["height"])
        if blk is None:
            raise NotFoundError(f"block {found['height']} of transaction {txid} is not folded yet")
        return {"txid": txid, "height": found["height"], "block_hash": blk["hash"],
                "tx_root": blk["header"]["tx_root"], "index": found["index"],
                "branch": tx_branch(blk["txids"], found["index"]),
                "provenance": self.provenance("chainstate")}

    def worker(self, address: str) -> dict[str, Any]:
        if not ADDRESS_RE.match(address):
            raise bad_request(f"{address!r} is not a 40-hex address")
        return {**payouts.worker(self._view("payouts"), address), "provenance": self.provenance("payouts")}

    def provider(self, provider_id: str, height: int | None = None) -> dict[str, Any]:
        self._as_of(height, f"provider {provider_id!r}")
        found = energy.provider(self._view("energy"), provider_id, height)
        if found is None:
            raise NotFoundError(f"no provider {provider_id!r}" + ("" if height is None else f" at height {height}"))
        return {**found, **_at(height), "provenance": self.provenance("energy")}

    # -- the energy market (docs/PROTOCOL.md §8.5) ------------------------------------------------
    def providers(self, limit: int | None = None, after: str | None = None,
                  height: int | None = None) -> dict[str, Any]:
        """A page of providers in provider_id order (UTF-8 bytes), after the cursor ``after``;
        ``next_after`` is the cursor of the next page (null on the last)."""
        limit = PROVIDERS_PAGE if limit is None else limit
        if not 1 <= limit <= PROVIDERS_PAGE_MAX:
            raise bad_request(f"limit must be between 1 and {PROVIDERS_PAGE_MAX}")
        if after is not None and not 0 < len(after) <= MAX_PROVIDER_ID:
            raise bad_request(f"after is a provider_id: 1 to {MAX_PROVIDER_ID} characters")
        self._as_of(height, "the providers")
        rows = energy.page(self._view("energy"), limit + 1, after, height)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"providers": rows, "count": len(rows), "limit": limit,
                "next_after": rows[-1]["provider_id"] if more else None, **_at(height),
                "provenance": self.provenance("energy")}

    def market(self, height: int | None = None) -> dict[str, Any]:
        self._as_of(height, "the energy market")
        return {**energy.market(self._view("energy"), height), **_at(height), "provenance": self.provenance("energy")}

    def governance(self, height: int | None = None) -> dict[str, Any]:
        """The governance parameters in force now or as of ``height``."""
        self._as_of(height, "the governance parameters")
        return {"parameters": energy.parameters(self._view("energy"), self.runner.genesis, height), **_at(height),
                "provenance": self.provenance("energy")}

    # -- any projection's raw state (user projections; ops/query/userviews.py) --------------------
    def projections(self) -> dict[str, Any]:
        return userviews.listing(self)

    def projection_entry(self, name: str, key: str) -> dict[str, Any]:
        return userviews.entry(self, name, key)

    def projection_page(self, name: str, prefix: str | None = None, start: str | None = None,
                        limit: int | None = None) -> dict[str, Any]:
        return userviews.page(self, name, prefix, start, limit)

    def _part(self, name: str, read: Any) -> Any:
        """A dashboard section read from ``name``; None while that projection is failed."""
        h = self.runner.handles[name]
        return None if h.failed is not None else read(h.store.view())

    def _ranked(self, name: str, what: str, read: Any) -> Any:
        """``_part`` for a section that walks a whole projection (the richest accounts, the top
        workers and providers): kept while the projection's state is the same, and for
        RANK_SECONDS however it changes (a node taking traffic changes it with every fold), so the
        dashboard's cost per request does not grow with the number of accounts or clients."""
        h = self.runner.handles[name]
        if h.failed is not None:
            return None
        key, now = (h.store.path, h.store.digest), self.clock()
        hit = self._ranks.get((name, what))
        if hit is not None and (hit[0] == key or now - hit[1] < RANK_SECONDS):
            return hit[2]
        value = read(h.store.view())
        self._ranks[(name, what)] = (key, now, value)
        return value

    def sample(self) -> None:
        """Note the mempool size and the energy credited at the tip as it is now (for the
        dashboard's series; the node calls this a few times a second)."""
        cs = self._view("chainstate")
        credited = self._part("energy", lambda v: energy.market(v)["credited_milli_kwh"])
        self.samples.record(chainstate.tip(cs)["height"], chainstate.mempool_size(cs), credited)

    def dashboard(self) -> dict[str, Any]:
        cs = self._view("chainstate")
        tip = chainstate.tip(cs)
        point = self.runner.log.prune_point()  # nothing below a prune is served
        recent = [b for b in chainstate.recent_blocks(cs, SERIES_BLOCKS) if point is None or b["height"] >= point.height]
        market = self._part("energy", energy.market)
        now_ms = time.time() * 1000
        span = (recent[0]["timestamp"] - recent[-1]["timestamp"]) / 1000 if len(recent) > 1 else 0
        txs = sum(b["tx_count"] for b in recent[:-1]) if len(recent) > 1 else 0
        log = self.runner.log
        return _exact_in_js({
            "status": {"chain_id": self.chain_id, "height": tip["height"], "tip_hash": tip["tip_hash"],
                       "tip_timestamp": tip["tip_timestamp"], "total_txs": tip["total_txs"],
                       "mempool": chainstate.mempool_size(cs)},
            "rates": {"blocks_per_minute": round((len(recent) - 1) * 60 / span, 2) if span > 0 else 0.0,
                      "tps": round(txs / span, 2) if span > 0 else 0.0,
                      "seconds_since_block": round(max(0.0, (now_ms - tip["tip_timestamp"]) / 1000), 1)},
            "recent_blocks": recent[:20],
            "series": block_series(recent, self.samples, market["credited_milli_kwh"] if market else None),
            "coin": {"decimals": COIN_DECIMALS},
            "richest": self._ranked("balances", "richest", lambda v: balances.richest(v, 10)),
            "pool": self._part("payouts", payouts.pool),
            "workers": self._ranked("payouts", "workers", lambda v: payouts.workers(v, 10)),
            "energy": market,
            "providers": self._ranked("energy", "providers", lambda v: energy.providers(v, 10)),
            "lag": self.runner.lag(),
            "log": {t: sum(log.end_offsets(t)) for t in sorted(log.topics())},
            "user_projections": self._user_panels(),
        })

    def _user_panels(self) -> list[dict[str, Any]]:
        """The dashboard's look at each user projection: its first keys in key order."""
        out: list[dict[str, Any]] = []
        for name, h in self.runner.handles.items():
            if not getattr(h.module, "USER", False):
                continue
            row: dict[str, Any] = {"name": name, "version": h.version}
            if h.failed is not None:
                row["failed"] = h.failed.message
            else:
                row["items"] = userviews.page(self, name, limit=DASHBOARD_KEYS, value_chars=DASHBOARD_VALUE_CHARS)["items"]
            out.append(row)
        return out


_JS_EXACT = 2**53 - 1  # the largest integer a browser's JSON.parse keeps exact


def _exact_in_js(value: Any) -> Any:
    """``value`` with integers beyond ±(2^53 - 1) as decimal strings: the dashboard reads its
    answer with JSON.parse, which rounds them (its formatters take digit strings exactly)."""
    if type(value) is int:
        return str(value) if not -_JS_EXACT <= value <= _JS_EXACT else value
    if isinstance(value, dict):
        return {k: _exact_in_js(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact_in_js(v) for v in value]
    return value
