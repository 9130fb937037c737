"""Balances history in chunks of HISTORY_SPAN heights: whatever the order and batching of the
rows, the state (and so the digest) is the one of folding them in height order, and the answer
at every height is the running total of the rows at or below it."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlog.projections import balances
from ledgerlog.projections.memory import MemoryTxn

ADDRS = ("aa", "bb", "cc")
SPAN = balances.HISTORY_SPAN

rows = st.lists(st.tuples(st.sampled_from(ADDRS), st.integers(0, 4 * SPAN + 3),
                          st.one_of(st.integers(-2, 2), st.integers(-10**20, 10**20)), st.integers(0, 5),
                          st.integers(0, 50)),
                min_size=1, max_size=60)


def _fold(batches: list[list[balances.Row]]) -> MemoryTxn:
    txn = MemoryTxn()
    for batch in batches:
        balances.fold_rows(batch, txn)
    return txn


def _expected(folded: list[balances.Row], addr: str, height: int) -> tuple[int, int, int]:
    mine = [r for r in folded if r[0] == addr and r[1] <= height]
    return (sum(r[2] for r in mine), sum(r[3] for r in mine), max((r[4] for r in mine), default=0))


@settings(max_examples=150, deadline=None)
@given(rows=rows, order=st.randoms(use_true_random=False), cuts=st.lists(st.integers(1, 60), max_size=8))
def test_any_order_and_batching_gives_the_height_ordered_state(rows, order, cuts):
    in_height_order = _fold([sorted(rows, key=lambda r: r[1])])
    shuffled = list(rows)
    order.shuffle(shuffled)
    batches, start = [], 0
    for cut in [*sorted(set(cuts)), len(shuffled)]:
        batches.append(shuffled[start:cut])
        start = max(start, cut)
    got = _fold([b for b in batches if b])
    assert got.digest() == in_height_order.digest()
    assert got.entries == in_height_order.entries
    for addr in ADDRS:
        for height in range(0, 4 * SPAN + 6):
            a = balances.account(got, addr, height)
            assert (a["balance"], a["staked"], a["nonce"]) == _expected(rows, addr, height), (addr, height)


def test_a_span_without_entries_below_the_height_answers_from_the_chunk_before():
    txn = _fold([[("aa", 3, 5, 0, 1), ("aa", SPAN + 10, 7, 0, 2)]])
    assert len([k for k in txn.entries if k.startswith(b"h/aa/")]) == 2  # two spans, two keys
    assert balances.account(txn, "aa", SPAN + 9)["balance"] == 5   # the span's chunk starts above it
    assert balances.account(txn, "aa", SPAN + 10)["balance"] == 12
    assert balances.account(txn, "aa", 2)["balance"] == 0


def _in_parts(rows: list[balances.Row], owner: list[int], parts: int) -> list[MemoryTxn]:
    """Each part folds its own rows (any order); the first also holds the 'genesis' rows."""
    return [_fold([[r for r, o in zip(rows, owner) if o % parts == i]]) for i in range(parts)]


#: few rows of small amounts: parts whose balance and stake add up to nothing, but a nonce
sparse_rows = st.lists(st.tuples(st.sampled_from(ADDRS[:2]), st.integers(0, 4 * SPAN + 3), st.integers(-1, 1),
                                 st.integers(0, 1), st.integers(0, 5)), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(rows=st.one_of(rows, sparse_rows), genesis=st.lists(st.tuples(st.sampled_from(ADDRS), st.integers(1, 10**6)), max_size=3,
                                   unique_by=lambda g: g[0]),
       owner=st.lists(st.integers(0, 3), min_size=60, max_size=60), parts=st.integers(1, 4))
def test_parts_folded_apart_merge_into_the_state_of_one_fold(rows, genesis, owner, parts):
    """A rebuild split by partition: parts fold disjoint rows (the first from the genesis state),
    and ``merge`` gives exactly the entries, so the digest, of folding every row at once."""
    start = [(addr, 0, amount, 0, 0) for addr, amount in genesis]  # initial()'s state, as rows
    whole = _fold([sorted(start + rows, key=lambda r: r[1])])
    split = _in_parts(rows, owner, parts)
    balances.fold_rows(start, split[0])
    merged = MemoryTxn(dict(balances.merge(split)))
    assert merged.entries == whole.entries
    assert merged.digest() == whole.digest()
    keys = [k for k, _ in balances.merge(split)]
    assert keys == sorted(keys)  # streamed in key order


def test_merge_keeps_an_account_whose_parts_hold_different_spans():
    split = [_fold([[("aa", 3, 5, 0, 1)]]), _fold([[("aa", 2 * SPAN + 1, -2, 1, 4), ("bb", 9, 1, 0, 0)]])]
    merged = MemoryTxn(dict(balances.merge(split)))
    assert merged.entries == _fold([[("aa", 3, 5, 0, 1), ("aa", 2 * SPAN + 1, -2, 1, 4), ("bb", 9, 1, 0, 0)]]).entries
    assert balances.account(merged, "aa", 2 * SPAN + 1) == {"address": "aa", "balance": 3, "staked": 1, "nonce": 4,
                                                          "height": 2 * SPAN + 1}


def test_merge_carries_a_nonce_from_a_part_whose_balance_did_not_move():
    rows = [("aa", 3, 0, 0, 50), ("aa", SPAN + 6, 5, 0, 1)]
    merged = MemoryTxn(dict(balances.merge([_fold([rows[:1]]), _fold([rows[1:]])])))
    assert merged.entries == _fold([rows]).entries
