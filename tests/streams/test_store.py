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


@settings(max_examples=150, deadline=None)
@given(stored=st.dictionaries(st.binary(min_size=1, max_size=3), st.binary(max_size=2), max_size=30),
       writes=st.dictionaries(st.binary(min_size=1, max_size=3), st.none() | st.binary(max_size=2), max_size=30),
       prefix=st.binary(max_size=1), start=st.none() | st.binary(max_size=3))
def test_an_overlay_walk_is_the_store_with_its_writes_in_key_order(tmp_path_factory, stored, writes, prefix,
                                                                   start) -> None:
    """items(prefix, start) of a fold's overlay: the stored keys with the uncommitted writes over
    them (a None write deletes), in key order, from the later of start and prefix."""
    store = ProjectionStore(str(tmp_path_factory.mktemp("overlay")))
    try:
        txn = store.begin()
        for k, v in stored.items():
            txn.put(b"\x01" + k, v)
        store.commit(txn, {})
        txn = store.begin()
        for k, v in writes.items():
            if v is None:
                txn.delete(b"\x01" + k)
            else:
                txn.put(b"\x01" + k, v)
        full = {b"\x01" + k: v for k, v in stored.items()}
        full.update({b"\x01" + k: v for k, v in writes.items()})
        pre = b"\x01" + prefix
        lo = pre if start is None else max(pre, b"\x01" + start)
        want = sorted((k, v) for k, v in full.items() if v is not None and k.startswith(pre) and k >= lo)
        assert list(txn.items(pre, None if start is None else b"\x01" + start)) == want
    finally:
        store.close()


def test_an_overlay_walk_left_early_reads_no_further_than_it_went(tmp_path) -> None:
    """A fold that walks keys from a point and stops at a bound (payouts' rounds and weights)
    reads what it walked, not the whole rest of the prefix: an unsigned share mined far below
    the tip must not cost a read of the pool's whole history."""
    store = ProjectionStore(str(tmp_path / "s"))
    try:
        txn = store.begin()
        for i in range(20_000):
            txn.put(b"w/" + i.to_bytes(4, "big"), b"1")
        store.commit(txn, {})
        txn = store.begin()
        txn.put(b"w/" + (5).to_bytes(4, "big"), b"2")

        class Counting:  # the store's database, counting the records its iterators step over
            steps = 0

            def __init__(self, db) -> None:
                self.db = db

            def iter(self):
                it, outer = self.db.iter(), self

                class Step:
                    def __getattr__(self, name):
                        return getattr(it, name)

                    def next(self):
                        outer.steps += 1
                        it.next()
                return Step()

        counting = Counting(txn._db)
        txn._db = counting
        walk = txn.items(b"w/", b"w/" + (3).to_bytes(4, "big"))
        got = [next(walk) for _ in range(4)]
        assert got[2] == (b"w/" + (5).to_bytes(4, "big"), b"2")
        assert counting.steps < 100
    finally:
        store.close()


def test_reads_go_on_across_a_reopen_after_a_disk_fault(tmp_path) -> None:
    """After a refused write the fold reopens the store; a query's view (and the height) still
    read the closed database: DbClosedError, a 500. Reads follow the store to the reopened one,
    also while another thread reopens it over and over (rocksdict's close() under a read raised
    "Already mutably borrowed", or hung both threads)."""
    import threading

    store = ProjectionStore(str(tmp_path / "s"))
    txn = store.begin()
    txn.put(b"k", b"v")
    store.commit(txn, {("t", 0): 1}, height=7)
    view = store.view()
    store._reopen()
    assert view.get(b"k") == b"v" and list(view.items(b"k")) == [(b"k", b"v")]
    assert view.last_at_or_before(b"k", b"kz") == (b"k", b"v") and store.height == 7
    stop = threading.Event()
    errors: list[Exception] = []

    def reopen() -> None:
        while not stop.wait(0.002):  # (a fold reopens at most once a second)
            store._reopen()

    t = threading.Thread(target=reopen)
    t.start()
    try:
        for _ in range(500):
            try:
                view = store.view()
                assert view.get(b"k") == b"v" and store.height == 7 and list(view.items(b"k")) == [(b"k", b"v")]
            except Exception as exc:
                errors.append(exc)
    finally:
        stop.set()
        t.join()
        store.close()
    assert not errors, errors[:3]


def test_reads_racing_a_close_get_a_typed_error_never_rocksdicts(tmp_path) -> None:
    """close() (a swap's retired store, a node's stop) under a read on another thread could raise
    rocksdict's "Already mutably borrowed" (a 500) or hang: it waits for the reads under way,
    and later ones get StorageUnavailableError."""
    import threading

    from ledgerlog.engine.errors import StorageUnavailableError
    for _ in range(20):
        store = ProjectionStore(str(tmp_path / "s"))
        txn = store.begin()
        txn.put(b"k", b"v")
        store.commit(txn, {("t", 0): 1}, height=3)
        view, errors, stop = store.view(), [], threading.Event()

        def read(view=view, errors=errors, stop=stop) -> None:
            while not stop.is_set():
                try:
                    view.get(b"k")
                except StorageUnavailableError:
                    return
                except Exception as exc:  # collected
                    errors.append(exc)
                    return
        readers = [threading.Thread(target=read) for _ in range(3)]
        for t in readers:
            t.start()
        store.close()
        stop.set()
        for t in readers:
            t.join(10)
        assert not any(t.is_alive() for t in readers) and not errors, errors
