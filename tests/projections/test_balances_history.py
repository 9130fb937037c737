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
                          st.integers(-10**20, 10**20), st.integers(0, 5), st.integers(0, 50)),
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
