"""Projection stores (streams/store.py): the incremental digest equals the digest of the content
however keys are written (read first or blind, new or overwritten, deleted, rewritten unchanged),
with the KeyFilter that lets blind writes of new keys skip reading, through its growth, and after
reopening; ``hash_sum`` is the sum of ``entry_hash``."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlog.engine.digest import DIGEST_MOD, entry_hash, hash_sum
from ledgerlog.streams.store import KeyFilter, ProjectionStore


def content_digest(store: ProjectionStore) -> int:
    return sum(entry_hash(k, v) for k, v in store.db.items() if not k.startswith(b"\x00")) % DIGEST_MOD


@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=300)), max_size=50))
@settings(max_examples=200, deadline=None)
def test_hash_sum_is_the_sum_of_entry_hashes(entries) -> None:
    assert hash_sum(entries) == sum(entry_hash(k, v) for k, v in entries)


def test_key_filter_has_no_false_negatives() -> None:
    f = KeyFilter(1000)
    keys = [b"k%d" % i for i in range(1000)]
    f.add(keys)
    assert all(k in f for k in keys) and f.count == 1000
    others = sum(b"other%d" % i in f for i in range(10_000))
    assert others < 10_000 * 0.1  # about 3% false positives at capacity


def test_key_filter_grows_by_layers_without_losing_keys() -> None:
    f = KeyFilter(1000)
    room = f.capacity
    keys = [b"k%d" % i for i in range(10 * room)]
    for i in range(0, len(keys), 777):  # adds that straddle layer boundaries
        f.add(keys[i:i + 777])
    assert len(f.layers) >= 3 and f.count == len(keys) <= f.capacity
    assert all(k in f for k in keys) and f.maybe(keys) == keys
    others = [b"other%d" % i for i in range(10_000)]
    assert len(f.maybe(others)) < 10_000 * 0.15  # a few percent per layer


def test_a_filter_past_its_memory_bound_is_dropped(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ProjectionStore, "FILTER_AFTER_BLIND", 10)
    monkeypatch.setattr(ProjectionStore, "FILTER_MIN_CAPACITY", 64)
    monkeypatch.setattr(ProjectionStore, "FILTER_MAX_BYTES", 2048)
    store = ProjectionStore(str(tmp_path / "s"))
    for round_ in range(6):
        txn = store.begin()
        for i in range(200):
            txn.put(b"a/%d" % (round_ * 150 + i), b"%d" % round_)  # new keys, and overwrites
        store.commit(txn, {})
        assert store.digest == content_digest(store)
    assert store._keys is None and store._keys_tried
    store.close()


@pytest.mark.parametrize("filtered", [True, False])
def test_digest_equals_content_through_blind_overwrites_and_deletes(tmp_path, monkeypatch, filtered: bool) -> None:
    monkeypatch.setattr(ProjectionStore, "FILTER_AFTER_BLIND", 50 if filtered else 10**9)
    monkeypatch.setattr(ProjectionStore, "FILTER_MIN_CAPACITY", 64)  # so that it grows, several times
    rng = random.Random(4)
    path = str(tmp_path / "s")
    store = ProjectionStore(path)
    universe = [b"k/%04d" % i for i in range(3000)]
    for round_ in range(40):
        if round_ == 20:  # reopen: a new process has no filter until a large blind commit
            store.close()
            store = ProjectionStore(path)
        txn = store.begin()
        for _ in range(rng.choice([5, 80, 400])):
            key = rng.choice(universe)
            r = rng.random()
            if r < 0.15:
                txn.get(key)  # read first, then maybe written
            if r < 0.25:
                txn.delete(key)
            elif r < 0.35 and txn.get(key) is not None:
                txn.put(key, txn.get(key))  # rewritten unchanged
            else:
                txn.put(key, b"v%d" % rng.randrange(5))  # blind: new, or overwriting
        store.commit(txn, {("t", 0): round_})
        assert store.digest == content_digest(store), round_
    assert (store._keys is not None) == filtered
    if filtered:
        assert store._keys.count <= store._keys.capacity
        present = [k for k, _ in store.db.items() if not k.startswith(b"\x00")]
        txn = store.begin()
        assert all(txn.get(k) == store.db.get(k) for k in present)  # reads through the filter
    store.close()


def test_large_stores_keep_no_filter(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ProjectionStore, "FILTER_AFTER_BLIND", 10)
    monkeypatch.setattr(ProjectionStore, "FILTER_MAX_KEYS", 100)
    store = ProjectionStore(str(tmp_path / "s"))
    txn = store.begin()
    for i in range(500):
        txn.put(b"a/%d" % i, b"1")
    store.commit(txn, {})
    store.close()
    store = ProjectionStore(str(tmp_path / "s"))
    txn = store.begin()
    for i in range(300, 800):
        txn.put(b"a/%d" % i, b"2")
    store.commit(txn, {})
    assert store._keys is None and store.digest == content_digest(store)
    store.close()
