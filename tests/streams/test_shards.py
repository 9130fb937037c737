"""The sharded balances fold without a broker: rows derived from an embedded log, spread over
partitions by account, folded shard by shard (in uneven batches, with a resumed deriver's
duplicates in between) give the embedded fold's digest (summed) and its answers, as of any height."""
from __future__ import annotations

import random
from typing import Any

import pytest

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import generate, make_genesis
from ledgerlog.projections import balances
from ledgerlog.streams.feed import EventDecoder, Feed
from ledgerlog.streams.runner import Runner
from ledgerlog.streams.shards.repartition import SOURCES, combine_digests, encode_rows, partition_of
from ledgerlog.streams.shards.shard import Shard, shard_path

SEED = 31
TOPIC = "movements"


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory) -> dict[str, Any]:
    genesis, keys = make_genesis(SEED, wallets=10)
    lines = list(generate(genesis, keys, events=1500, seed=SEED, invalid_every=89))
    cfg = Config(data_dir=str(tmp_path_factory.mktemp("emb") / "data"), sync=False, ingest_chunk=100)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        chain.admitter.admit(lines)
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, names=["balances"])
        try:
            runner.catch_up()
            view = runner.handles["balances"].store.view()
            addrs = sorted(k[2:].decode() for k, _ in view.items(b"a/"))
            height = runner.handles["balances"].store.height
            answers = {(a, h): balances.account(view, a, h) for a in addrs for h in range(0, height + 2, 7)}
            answers.update({(a, None): balances.account(view, a) for a in addrs})
            digest = runner.digests()["balances"]
        finally:
            runner.close()
        feed = Feed(chain.log, EventDecoder(chain.codec), SOURCES, {})
        ends = {t: chain.log.end_offsets(t) for t in SOURCES}
        entries = feed.take_raw(1 << 30, ends)
        derived = [list(encode_rows(chain.genesis, *feed.tps[i], off, ev)) for _h, i, off, ev in entries]
        return {"genesis": chain.genesis, "derived": derived, "answers": answers, "digest": digest}


def _topic(derived: list[list[tuple[bytes, bytes]]], n: int, resume_at: list[tuple[int, int]]) -> list[list[tuple[int, bytes, bytes]]]:
    """The repartition topic's partitions as a deriver writes them: events in order, except that
    at each (event index, back) of ``resume_at`` it dies and resumes ``back`` events earlier."""
    parts: list[list[tuple[int, bytes, bytes]]] = [[] for _ in range(n)]
    order = list(range(len(derived)))
    for at, back in sorted(resume_at, reverse=True):
        order[at:at] = list(range(max(0, at - back), at))
    for e in order:
        for key, value in derived[e]:
            p = parts[partition_of(key.decode(), n)]
            p.append((len(p), key, value))
    return parts


@pytest.mark.parametrize("n,resume_at", [(1, []), (4, []), (5, [(300, 120), (900, 40)])])
def test_shards_sum_to_the_embedded_fold(tmp_path, chain_dir, n, resume_at) -> None:
    genesis = chain_dir["genesis"]
    parts = _topic(chain_dir["derived"], n, resume_at)
    rng = random.Random(n)
    shards = [Shard(shard_path(str(tmp_path), n, k), genesis, TOPIC, k, n) for k in range(n)]
    try:
        for k, recs in enumerate(parts):
            i = 0
            while i < len(recs):
                j = i + rng.randint(1, 200)
                shards[k].fold(recs[i:j])
                if rng.random() < 0.1:  # a worker restarts: the store holds position and marks
                    shards[k].close()
                    shards[k] = Shard(shard_path(str(tmp_path), n, k), genesis, TOPIC, k, n)
                i = j
        assert combine_digests(s.digest_hex() for s in shards) == chain_dir["digest"]
        if resume_at:
            assert sum(s.skipped for s in shards) > 0  # the duplicates were there, and skipped
        for (addr, h), want in chain_dir["answers"].items():
            got = shards[partition_of(addr, n)].account(addr, h)
            assert got == want, (addr, h)
        # a second pass over a partition's records folds nothing (positions, then marks)
        before = shards[0].digest_hex()
        assert shards[0].fold(parts[0]) == 0 and shards[0].digest_hex() == before
    finally:
        for s in shards:
            s.close()
