"""The sharded balances fold without a broker: rows derived from an embedded log by one deriver
per source partition running at uneven speeds, spread over partitions by account, folded shard by
shard (in uneven batches, with restarts and resumed derivers' duplicates in between) give the
embedded fold's digest (summed) and its answers, as of any height; with the derivers' bounds the
shards fold every row in height order."""
from __future__ import annotations

import random
from typing import Any

import pytest
from workertools import embedded_balances

from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.intjson import loads
from ledgerlog.ops.devtools.histgen import generate, make_genesis
from ledgerlog.projections import balances
from ledgerlog.streams.feed import EventDecoder, Feed
from ledgerlog.streams.shards import shard as shard_module
from ledgerlog.streams.shards.repartition import (
    SOURCES,
    LeaseLayout,
    combine_digests,
    pack_rows,
    partition_of,
)
from ledgerlog.streams.shards.shard import Bounds, Shard, shard_path

SEED = 31
TOPIC = "movements"


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory) -> dict[str, Any]:
    genesis, keys = make_genesis(SEED, wallets=10)
    lines = list(generate(genesis, keys, events=1500, seed=SEED, invalid_every=89))
    data = str(tmp_path_factory.mktemp("emb") / "data")
    digest, answers, height = embedded_balances(data, genesis, lines, lambda tip: list(range(0, tip + 2, 7)))
    with open_chain(Config(data_dir=data), read_only=True) as chain:
        feed = Feed(chain.log, EventDecoder(chain.codec), SOURCES, {})
        ends = {t: chain.log.end_offsets(t) for t in SOURCES}
        by_source: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for _h, i, off, ev in feed.take_raw(1 << 30, ends):  # each source partition's events, in offset order
            by_source.setdefault(i, []).append((off, ev))
        return {"genesis": chain.genesis, "by_source": by_source, "tps": feed.tps, "answers": answers,
                "digest": digest, "tip": height}


def _topic(chain: dict[str, Any], n: int, resumes: int, rng: random.Random) -> tuple[list[list[tuple[int, bytes, bytes]]], Bounds]:
    """The repartition topic's partitions as per-source-partition derivers write them, running at
    random relative speeds (chunks of 1-150 events each turn); ``resumes`` times one of them dies
    and resumes up to 120 events earlier (its rows written twice). With the bounds the derivers'
    final progress records give (every one done: the tip; the end of its rows per partition)."""
    parts: list[list[tuple[int, bytes, bytes]]] = [[] for _ in range(n)]
    todo = {i: 0 for i in chain["by_source"]}
    last_end: dict[int, list[int]] = {i: [0] * n for i in todo}
    while todo:
        i = rng.choice(sorted(todo))
        events = chain["by_source"][i]
        at = todo[i]
        if resumes and at > 0 and rng.random() < 0.05:
            resumes -= 1
            at = max(0, at - rng.randint(1, 120))
        stop = min(len(events), at + rng.randint(1, 150))
        for k, key, value in pack_rows(chain["genesis"], *chain["tps"][i], events[at:stop], n):
            parts[k].append((len(parts[k]), key, value))
            last_end[i][k] = len(parts[k])
        todo[i] = stop
        if stop == len(events):
            del todo[i]
    bounds: Bounds = {}
    for t, p in chain["tps"]:
        bounds[(SOURCES.index(t), p)] = (chain["tip"], 0)  # a source partition without events: its record still comes
    for i, ends in last_end.items():
        t, p = chain["tps"][i]
        bounds[(SOURCES.index(t), p)] = (chain["tip"], max(ends))
    return parts, bounds


def _per_partition(bounds: Bounds, parts: list[list[tuple[int, bytes, bytes]]], k: int, n: int,
                   chain: dict[str, Any]) -> Bounds:
    """The bounds as shard k sees them: the end of each source's rows in partition k."""
    out: Bounds = {}
    for (s, p), given in bounds.items():
        assert given is not None
        end = 0
        for off, _key, value in parts[k]:
            if tuple(loads(value)[:2]) == (s, p):
                end = off + 1
        out[(s, p)] = (given[0], end)
    return out


@pytest.mark.parametrize("n,resumes,ordered", [(1, 0, True), (4, 0, False), (4, 0, True), (5, 6, True)])
def test_shards_sum_to_the_embedded_fold(tmp_path, chain_dir, n, resumes, ordered, monkeypatch) -> None:
    """With the derivers' bounds a shard folds in height order (the fold never rewrites history);
    without them (``ordered`` False) rows fold as they come, out of order. The state is the
    embedded fold's either way."""
    genesis = chain_dir["genesis"]
    rng = random.Random(n * 10 + resumes)
    parts, bounds = _topic(chain_dir, n, resumes, rng)
    per = [_per_partition(bounds, parts, k, n, chain_dir) if ordered else None for k in range(n)]
    rewrites = []
    rewrite = balances._Batch._rewrite_history
    monkeypatch.setattr(balances._Batch, "_rewrite_history", lambda self, *a: (rewrites.append(a), rewrite(self, *a)))
    shards = [Shard(shard_path(str(tmp_path), n, k), genesis, TOPIC, k, n) for k in range(n)]
    try:
        for k, recs in enumerate(parts):
            i = 0
            while i < len(recs):
                j = i + rng.randint(1, 200)
                shards[k].fold(recs[i:j], per[k])
                if rng.random() < 0.1:  # a worker restarts: the store holds position and marks
                    shards[k].close()
                    shards[k] = Shard(shard_path(str(tmp_path), n, k), genesis, TOPIC, k, n)
                i = shards[k].read_to  # a restarted one reads its held rows again
            assert not shards[k].held  # every source passed the tip: nothing waits
        assert combine_digests(s.digest_hex() for s in shards) == chain_dir["digest"]
        if resumes:
            assert sum(s.skipped for s in shards) > 0  # the duplicates were there, and skipped
        if ordered:
            assert rewrites == []  # rows of every source folded in height order
        elif n > 1:
            assert rewrites  # the sources' rows interleave out of height order: the slow path ran
        for (addr, h), want in chain_dir["answers"].items():
            got = shards[partition_of(addr, n)].account(addr, h)
            assert got == want, (addr, h)
        # a second pass over a partition's records folds nothing (positions, then marks)
        before = shards[0].digest_hex()
        assert shards[0].fold(parts[0], per[0]) == 0 and shards[0].digest_hex() == before
    finally:
        for s in shards:
            s.close()


def _sources(spec: dict[str, int]) -> list[tuple[str, int]]:
    return [(t, p) for t, n in spec.items() for p in range(n)]


@pytest.mark.parametrize("shards,spec", [(1, {"a": 1}), (4, {"b": 1, "t": 4, "p": 4, "s": 4, "y": 4}),
                                         (8, {"b": 1, "t": 4, "p": 4, "s": 4, "y": 4}), (16, {"a": 5}),
                                         (3, {"a": 8, "b": 32})])
def test_lease_layout_spreads_shards_among_derive_leases(shards, spec) -> None:
    """Every lease partition stands for exactly one shard or source partition, and each half of
    the lease topic (an assignor's contiguous range for two members) holds shards."""
    sources = _sources(spec)
    layout = LeaseLayout(shards, sources)
    got_shards, got_derive = layout.split(range(layout.total))
    assert got_shards == set(range(shards)) and got_derive == set(range(len(sources)))
    assert [layout.split([layout.of_shard(k)]) for k in range(shards)] == [({k}, set()) for k in range(shards)]
    if shards >= 2:
        half = layout.total // 2
        assert layout.split(range(half))[0] and layout.split(range(half, layout.total))[0]
        assert layout.split(range(half))[1] and layout.split(range(half, layout.total))[1]


@pytest.mark.parametrize("shards", [8, 16, 32])
@pytest.mark.parametrize("members", [2, 3, 4])
@pytest.mark.parametrize("to_one_first", [False, True])
def test_the_group_deals_every_member_shards_and_a_share_of_each_source_topic(shards, members, to_one_first) -> None:
    """As faust's assignor deals the lease topic, to a new group or to members joining one that
    held it all, each member gets shards and a share of every source topic (laid out topic after
    topic, one of two members derived all of ledger.transactions, or held every shard); a new
    group of two splits both evenly (the benchmark's case). The chain's source layout: one block
    partition, four of each other balances topic; 8 shards and more (the default is 8: with as
    few shards as members, a new group can leave one member without a shard)."""
    sources = _sources({"ledger.blocks": 1, "ledger.transactions": 4, "energy.providers": 4,
                        "energy.settlements": 4, "pool.payouts": 4})
    shares = LeaseLayout(shards, sources).dealt(members, to_one_first=to_one_first)
    assert sorted(k for sh, _ in shares for k in sh) == list(range(shards))
    assert sorted(j for _, de in shares for j in de) == list(range(len(sources)))
    held = [len(sh) for sh, _ in shares]
    assert min(held) >= 1 and max(held) <= 2 * -(-shards // members), held
    for topic in ("ledger.transactions", "energy.providers", "energy.settlements", "pool.payouts"):
        derive = [sum(1 for j in de if sources[j][0] == topic) for _, de in shares]
        assert max(derive) <= -(-4 // members) + 1, (topic, derive)
        if members == 2 and not to_one_first:
            assert derive == [2, 2] and held == [shards // 2] * 2, (topic, derive, held)


def test_a_silent_source_holds_rows_up_to_the_cap(tmp_path, chain_dir, monkeypatch) -> None:
    """A source partition with no progress record (its deriver not started, or dead) holds every
    row back; past HOLD_CAP the lowest fold anyway, and once the rows are released the state is
    still the embedded fold's (the fold is order-independent)."""
    monkeypatch.setattr(shard_module, "HOLD_CAP", 60)
    n = 3
    rng = random.Random(7)
    parts, bounds = _topic(chain_dir, n, 2, rng)
    shards = [Shard(shard_path(str(tmp_path), n, k), chain_dir["genesis"], TOPIC, k, n) for k in range(n)]
    try:
        for k, recs in enumerate(parts):
            given = _per_partition(bounds, parts, k, n, chain_dir)
            given[(len(SOURCES), 0)] = None  # a source that never recorded progress
            for i in range(0, len(recs), 7):
                shards[k].fold(recs[i:i + 7], given)
                assert len(shards[k].held) <= 60 + 7 * 2000  # the cap, plus what one batch brought
            assert shards[k].held and shards[k].folded > 0  # held back, and folded past the cap
            shards[k].release(None)  # the source is gone for good (its rows would be folded in any order)
            assert not shards[k].held
        assert combine_digests(s.digest_hex() for s in shards) == chain_dir["digest"]
    finally:
        for s in shards:
            s.close()
