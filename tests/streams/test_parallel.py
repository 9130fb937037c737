"""Parallel builds (streams/parallel.py): the work is split by cost, balances into parts by log
partition that are merged afterwards; a parallel reproject and a parallel first fold give exactly
the digests of a sequential fold. (Killed and resumed: tests/streams/test_reproject.py.)"""
from __future__ import annotations

import os
from typing import Any

import pytest

from ledgerlog import projections
from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import generate, make_genesis
from ledgerlog.streams import parallel
from ledgerlog.streams.parallel import catch_up_parallel, part_paths, plan_groups
from ledgerlog.streams.parts import part_of
from ledgerlog.streams.reproject import reproject
from ledgerlog.streams.runner import Runner
from ledgerlog.streams.store import ProjectionStore

NAMES = list(projections.ALL)


class Ends:
    """A log as plan_groups sees it: end offsets per topic."""

    def __init__(self, counts: dict[str, list[int]]) -> None:
        self.counts = counts

    def end_offsets(self, topic: str) -> list[int]:
        return self.counts.get(topic, [0])


#: the bench history's shape (100k events)
BENCH = Ends({T.BLOCKS: [3535], T.TRANSACTIONS: [12011, 24986, 19670, 13004], T.MEMPOOL: [1497, 3101, 2568, 1638],
              T.SHARES: [3582, 5292, 0, 1794], T.PAYOUTS: [583, 892, 0, 296], T.PROVIDERS: [130, 160, 127, 158],
              T.READINGS: [732, 979, 700, 1076], T.SETTLEMENTS: [289, 426, 307, 470]})


def _complete(groups: list[list[tuple[str, int, int]]], names: list[str]) -> None:
    """Every projection is built once: whole, or as all of its parts, each in another group."""
    units = [u for g in groups for u in g]
    assert sorted({n for n, _, _ in units}) == sorted(names)
    for n in names:
        mine = sorted((i, k) for m, i, k in units if m == n)
        k = mine[0][1]
        assert mine == [(i, k) for i in range(k)]
    for g in groups:
        assert len({n for n, _, _ in g}) == len(g)


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_plans_build_every_projection_once_and_balance_the_work(workers: int) -> None:
    groups = plan_groups(BENCH, NAMES, workers)  # type: ignore[arg-type]
    _complete(groups, NAMES)
    assert len(groups) <= workers
    cost = parallel._cost_fn(BENCH, NAMES, dict(projections.ALL))  # type: ignore[arg-type]
    costs = [cost(g) for g in groups]
    assert costs == sorted(costs, reverse=True)  # the caller folds the costliest group
    if workers > 1:  # as even as whole projections allow: the costliest one may stand alone
        alone = max(cost([u]) for g in groups for u in g)
        assert len(groups) > 1 and max(costs) <= max(alone, 0.6 * sum(costs))


def test_balances_is_split_into_parts_where_that_pays_and_small_logs_are_not(monkeypatch: Any) -> None:
    # measured on 2 cores, the merge and running two processes at once eat what a split saves
    assert plan_groups(BENCH, ["balances"], 2) == [[("balances", 0, 1)]]  # type: ignore[arg-type]
    for k in (3, 4):  # from 3 on, it pays
        assert sorted(plan_groups(BENCH, ["balances"], k)) == [[("balances", i, k)] for i in range(k)]  # type: ignore[arg-type]
    monkeypatch.setenv(parallel.SPLIT_GAIN_ENV, "1.0")  # any gain will do
    groups = plan_groups(BENCH, ["balances"], 2)  # type: ignore[arg-type]
    assert sorted(groups) == [[("balances", 0, 2)], [("balances", 1, 2)]]
    small = Ends({t: [100] for t in T.EVENT_TOPICS})
    assert plan_groups(small, ["balances"], 4) == [[("balances", 0, 1)]]  # type: ignore[arg-type]
    assert parallel.groups_by_work(BENCH, ["balances"], 4) == [["balances"]]  # type: ignore[arg-type]


def test_every_partition_belongs_to_one_part_and_the_parts_share_the_records() -> None:
    for k in (2, 3, 4):
        for t in T.EVENT_TOPICS:
            for p in range(8):
                assert 0 <= part_of(t, p, k) < k and part_of(t, p, k) == part_of(t, p, k)
        load = [0] * k
        for t in projections.balances.TOPICS:
            for p, end in enumerate(BENCH.end_offsets(t)):
                load[part_of(t, p, k)] += end
        assert max(load) < 1.5 * sum(load) / k, load  # as even as the bench's partitions allow


# -- equal digests ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory: Any) -> Config:
    genesis, keys = make_genesis(31, wallets=16)
    cfg = Config(data_dir=str(tmp_path_factory.mktemp("par") / "data"), sync=False)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        assert chain.admitter.admit(generate(genesis, keys, events=3000, seed=31)).rejected == 0
    return cfg


@pytest.fixture
def split(monkeypatch: Any) -> list[list[list[tuple[str, int, int]]]]:
    """Split even a small log, on 2 cores; the plans build_bulk made."""
    monkeypatch.setenv(parallel.MIN_PARALLEL_RECORDS_ENV, "0")
    monkeypatch.setenv(parallel.SPLIT_GAIN_ENV, "10")  # as if parts always paid
    plans: list[Any] = []
    real = parallel.plan_groups

    def spy(*args: Any, **kw: Any) -> Any:
        plans.append(real(*args, **kw))
        return plans[-1]
    monkeypatch.setattr(parallel, "plan_groups", spy)
    return plans


def test_parallel_reproject_and_first_fold_give_the_sequential_digests(chain_dir: Config, tmp_path: Any,
                                                                       monkeypatch: Any, split: Any,
                                                                       caplog: Any) -> None:
    cfg = chain_dir
    cpu = parallel.CHILD_CPU_SECONDS
    with open_chain(cfg, read_only=True) as chain:
        live = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, batch=500)
        try:
            live.catch_up()  # sequential, one process
            want = live.digests()
            for names in (None, ["balances"], ["balances", "payouts"]):
                out = reproject(chain.log, chain.codec, chain.genesis, cfg.projections_dir, live, names,
                                keep=False, workers=2)
                assert all(p["identical"] and p["digest_after"] == want[p["projection"]] for p in out), out
                assert all(not os.path.isdir(part_paths(os.path.join(cfg.projections_dir, p["projection"],
                                                                     p["dir"]), 2)[0]) for p in out)
            assert live.digests() == want
        finally:
            live.close()
        assert any(("balances", 1, 2) in g for plan in split for g in plan), split  # it was split

        # a first fold far behind, built in parallel into the live stores
        monkeypatch.setattr(parallel, "FIRST_FOLD_MIN_LAG", 0)
        fresh = Runner(chain.log, chain.codec, chain.genesis, str(tmp_path / "projections"), batch=500)
        try:
            before = len(split)
            assert catch_up_parallel(fresh, 2) > 0
            assert len(split) > before and fresh.lag() == dict.fromkeys(NAMES, 0)
            assert fresh.digests() == want and list(fresh.handles) == NAMES
            assert fresh.step() == 0
        finally:
            fresh.close()
    # the children did fold (no fallback to this process), and reported what they used
    assert "parallel build failed" not in caplog.text and cpu < parallel.CHILD_CPU_SECONDS


def test_a_merge_of_parts_killed_halfway_is_done_again(chain_dir: Config, tmp_path: Any, split: Any) -> None:
    """Parts are folded; the merge into the build store dies after writing some of the state:
    the next build sees the parts, merges again, and the digest is the sequential one."""
    cfg = chain_dir
    with open_chain(cfg, read_only=True) as chain:
        seq = Runner(chain.log, chain.codec, chain.genesis, str(tmp_path / "seq"), names=["balances"], batch=500)
        try:
            seq.catch_up()
            want = seq.digests()["balances"]
        finally:
            seq.close()
        path = str(tmp_path / "build")
        _fold_parts(chain, tmp_path, path, [None, None])
        parts = part_paths(path, 2)
        half = ProjectionStore(path)  # as if a merge had written part of the state, then died
        src = ProjectionStore(parts[0], read_only=True)
        try:
            txn = half.begin()
            for k, v in list(src.view().items(b"a/"))[:5]:
                txn.put(k, v)
            txn.put(b"a/stale", b"[1,0,0,0]")
            half.commit(txn, {})
        finally:
            src.close()
            half.close()
        assert parallel._splittable(chain.log, path)
        assert _merge(chain, path, {}) == {}
        merged = ProjectionStore(path, read_only=True)
        try:
            assert merged.digest_hex() == want and merged.initialised
            assert merged.positions() == {(t, p): end for t in projections.balances.TOPICS
                                          for p, end in enumerate(chain.log.end_offsets(t)) if end}
            assert merged.view().get(b"a/stale") is None
        finally:
            merged.close()
        assert not os.path.isdir(os.path.join(path, parallel.PARTS_DIR))


def _merge(chain: Any, path: str, folded: dict[str, int]) -> dict[str, int]:
    """parallel._merge of balances' two parts at ``path``, folded to the log's ends."""
    ends = {t: chain.log.end_offsets(t) for t in projections.balances.TOPICS}
    return parallel._merge({"balances": path}, [[("balances", 0, 2)], [("balances", 1, 2)]], folded, True,
                           dict(projections.ALL), ends)


def _folded_balances(chain: Any, projections_dir: str, store: str | None = None) -> str:
    """The digest of balances folded whole in this process, into ``store`` (default: the live
    store under ``projections_dir``)."""
    runner = Runner(chain.log, chain.codec, chain.genesis, projections_dir, names=["balances"], batch=500,
                    paths={"balances": store} if store else None)
    try:
        runner.catch_up()
        return runner.digests()["balances"]
    finally:
        runner.close()


def _fold_parts(chain: Any, tmp_path: Any, path: str, until: list[dict[str, list[int]] | None]) -> None:
    for i, part in enumerate(part_paths(path, len(until))):
        r = Runner(chain.log, chain.codec, chain.genesis, str(tmp_path), names=["balances"], batch=500,
                   paths={"balances": part}, parts={"balances": (i, len(until))}, bulk=True)
        try:
            r.catch_up(until=until[i])
        finally:
            r.close()


def test_a_merge_killed_halfway_then_folded_whole_gives_the_sequential_digest(chain_dir: Config, tmp_path: Any,
                                                                               monkeypatch: Any) -> None:
    """The merge died after emptying the store and writing some of the merged state; the next
    build does not split (another worker count): it folds the store whole, from nothing, not on
    top of what the merge wrote."""
    from ledgerlog.streams import store as store_mod
    monkeypatch.setattr(store_mod, "_MERGE_BATCH", 10)
    with open_chain(chain_dir, read_only=True) as chain:
        want = _folded_balances(chain, str(tmp_path / "seq"))
        path = str(tmp_path / "build")
        _fold_parts(chain, tmp_path, path, [None, None])
        ends = {(t, p): end for t in projections.balances.TOPICS for p, end in enumerate(chain.log.end_offsets(t))
                if end}
        store = ProjectionStore(path, bulk=True)
        try:
            real, writes = store._guard.write, [0]

            def write(db: Any, wb: Any, wo: Any) -> None:  # the reset and a batch of state land, then death
                writes[0] += 1
                if writes[0] > 2:
                    raise OSError("killed")
                real(db, wb, wo)
            monkeypatch.setattr(store._guard, "write", write)
            with pytest.raises(OSError, match="killed"):
                store.absorb(part_paths(path, 2), projections.balances.merge, ends)
        finally:
            store.close()
        half = ProjectionStore(path, read_only=True)
        try:
            assert not half.initialised and half.positions() == {} and list(half.view().items(b"a/"))
        finally:
            half.close()
        assert _folded_balances(chain, str(tmp_path), path) == want


def test_a_part_that_stopped_early_is_not_merged_and_the_caller_folds_it_whole(chain_dir: Config,
                                                                               tmp_path: Any) -> None:
    """A fold that fails stops in one part only: that part ends short of the log ends the build
    folds to; the merge leaves the parts and reports nothing for the projection, so the caller
    folds it in its own process (where a failing fold stops that projection alone)."""
    with open_chain(chain_dir, read_only=True) as chain:
        path = str(tmp_path / "build")
        short = {t: [e // 2 for e in chain.log.end_offsets(t)] for t in projections.balances.TOPICS}
        _fold_parts(chain, tmp_path, path, [None, short])
        assert _merge(chain, path, {"balances/0/2": 9, "balances/1/2": 4}) == {}
        assert os.path.isdir(os.path.join(path, parallel.PARTS_DIR))
        want = _folded_balances(chain, str(tmp_path / "seq"))
        assert _folded_balances(chain, str(tmp_path), path) == want


def test_a_part_shares_its_runner_feed_with_whole_projections(chain_dir: Config, tmp_path: Any) -> None:
    """A process folding a part of balances beside whole projections reading the same topics
    (energy, payouts) reads each record once for all of them; each gets exactly its own events:
    the wholes their sequential digests, the parts (one of them folded alone) the merged one."""
    with open_chain(chain_dir, read_only=True) as chain:
        seq = Runner(chain.log, chain.codec, chain.genesis, str(tmp_path / "seq"), batch=500)
        try:
            seq.catch_up()
            want = seq.digests()
        finally:
            seq.close()
        path = str(tmp_path / "build")
        parts = part_paths(path, 2)
        paths = {"balances": parts[0], "energy": str(tmp_path / "energy"), "payouts": str(tmp_path / "payouts")}
        shared = Runner(chain.log, chain.codec, chain.genesis, str(tmp_path), names=list(paths), batch=500,
                        paths=paths, parts={"balances": (0, 2)}, bulk=True)
        try:
            shared.catch_up()
            assert shared._feed is not None and shared._feed.tps  # one feed served the three
            got = shared.digests()
            assert (got["energy"], got["payouts"]) == (want["energy"], want["payouts"])
            mine = shared.handles["balances"].partitions
            assert mine and all(part_of(t, p, 2) == 0 for t, p in mine)
        finally:
            shared.close()
        alone = Runner(chain.log, chain.codec, chain.genesis, str(tmp_path), names=["balances"], batch=500,
                       paths={"balances": parts[1]}, parts={"balances": (1, 2)}, bulk=True)
        try:
            alone.catch_up()
        finally:
            alone.close()
        assert _merge(chain, path, {}) == {}
        merged = ProjectionStore(path, read_only=True)
        try:
            assert merged.digest_hex() == want["balances"]
        finally:
            merged.close()


@pytest.mark.parametrize("leftover", [parallel.PARTS_DIR, parallel.LEGACY_SHARDS_DIR])
def test_a_build_that_goes_on_whole_drops_the_parts_a_killed_split_build_left(chain_dir: Config, tmp_path: Any,
                                                                              leftover: str) -> None:
    """Parts a killed build left are of no use once the build goes on whole (one worker here):
    they go, rather than sit in the store's directory for ever once it is live."""
    with open_chain(chain_dir, read_only=True) as chain:
        path = str(tmp_path / "build")
        _fold_parts(chain, tmp_path, path, [None, None])
        if leftover != parallel.PARTS_DIR:
            os.rename(os.path.join(path, parallel.PARTS_DIR), os.path.join(path, leftover))
        assert parallel.build_bulk(chain.log, chain.codec, chain.genesis, str(tmp_path), {"balances": path}, 500,
                                   1) == {}
        assert not os.path.exists(os.path.join(path, leftover))


@pytest.mark.parametrize("env,value", [("LEDGERLOG_SPLIT_GAIN", "abc"), ("LEDGERLOG_SPLIT_GAIN", "nan"),
                                       ("LEDGERLOG_SPLIT_GAIN", "-1"),
                                       ("LEDGERLOG_PARALLEL_MIN_RECORDS", "abc"),
                                       ("LEDGERLOG_PARALLEL_MIN_RECORDS", "1e9"),
                                       ("LEDGERLOG_PARALLEL_MIN_RECORDS", "-5")])
def test_odd_tuning_variables_are_config_errors_and_empty_ones_unset(monkeypatch: Any, env: str, value: str) -> None:
    """A bare int()/float() of them was INTERNAL (a node's first fold exited with it); an empty
    one was an error while every other LEDGERLOG_ variable left empty is unset."""
    from ledgerlog.engine.errors import ConfigError
    read = parallel.split_gain if env == parallel.SPLIT_GAIN_ENV else parallel.min_parallel_records
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=env):
        read()
    monkeypatch.setenv(env, "")
    assert read() == (parallel.SPLIT_GAIN if env == parallel.SPLIT_GAIN_ENV else parallel.MIN_PARALLEL_RECORDS)
