"""Transaction inclusion in a block (PROTOCOL.md §9, `GET /v1/tx/{txid}/proof`): a branch under the
tx_root rule of §2 rebuilds the header's tx_root from the txid, and a tampered one does not."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerlog.engine.crypto import tx_branch, tx_root, tx_root_from


def _txid(i: int) -> str:
    return hashlib.blake2b(i.to_bytes(4, "big"), digest_size=32).hexdigest()


@given(n=st.integers(1, 70), data=st.data())
def test_every_branch_rebuilds_the_root_and_a_tampered_one_does_not(n, data):
    txids = [_txid(i) for i in range(n)]
    root = tx_root(txids)
    i = data.draw(st.integers(0, n - 1))
    branch = tx_branch(txids, i)
    assert tx_root_from(txids[i], i, branch) == root
    assert len(branch) == (n - 1).bit_length()
    if n > 1:
        other = (i + 1) % n
        assert tx_root_from(txids[other], i, branch) != root or txids[other] == txids[i]
        k = data.draw(st.integers(0, len(branch) - 1))
        bad = list(branch)
        bad[k] = _txid(10_000 + k)
        assert tx_root_from(txids[i], i, bad) != root


def test_out_of_range_index_is_refused():
    with pytest.raises(ValueError):
        tx_branch([_txid(0)], 1)


@pytest.mark.parametrize("n", [1, 3, 4])
def test_a_branch_verifies_at_its_own_index_only(n):
    """Bits of the index above the branch's length were ignored: index i + 2**len(branch) verified
    as i did. (With an odd count the duplicated last txid also rebuilds the root from the place
    after it: only the header's tx_count tells that place is not a transaction.)"""
    txids = [_txid(i) for i in range(n)]
    root, i = tx_root(txids), n - 1
    branch = tx_branch(txids, i)
    assert tx_root_from(txids[i], i, branch) == root
    for wrong in (i + (1 << len(branch)), -1, 1 << len(branch)):
        with pytest.raises(ValueError):
            tx_root_from(txids[i], wrong, branch)
