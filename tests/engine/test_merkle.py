"""The RFC 6962 / 9162 Merkle tree (PROTOCOL.md §9) against published test vectors, and a
property test: for random logs and m <= n every proof verifies and every tampered one fails."""
from __future__ import annotations

import base64
import hashlib
import json

import pytest
from clitools import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlog.engine.merkle import (
    EMPTY_ROOT,
    Frontier,
    MemoryTree,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads((REPO / "tests" / "data" / "rfc6962_vectors.json").read_text())
#: the leaves of the reference tree those vectors (and RFC 6962's reference code) are built on
LEAVES = [bytes.fromhex(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                     "606162636465666768696a6b6c6d6e6f")]
ROOTS = {  # MTH of the first n reference leaves
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}


def b64(x: str | None) -> bytes:
    return base64.b64decode(x) if x else b""


def test_hashes_and_empty_root():
    assert EMPTY_ROOT.hex() == hashlib.sha256(b"").hexdigest()
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert leaf_hash(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert node_hash(b"N123", b"N456").hex() == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"


@pytest.mark.parametrize("n", range(1, 9))
def test_reference_roots(n):
    tree = MemoryTree(leaf_hash(x) for x in LEAVES[:n])
    assert tree.root().hex() == ROOTS[n]
    assert MemoryTree(leaf_hash(x) for x in LEAVES).root(n).hex() == ROOTS[n]


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: c["file"])
def test_inclusion_vectors(case):
    args = (case["leafIdx"], case["treeSize"], b64(case["leafHash"]),
            [b64(p) for p in case["proof"] or []], b64(case["root"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)
        tree = MemoryTree(leaf_hash(x) for x in LEAVES)
        if tree.root(case["treeSize"]) == args[4]:  # built on the reference leaves: we prove the same
            assert tree.inclusion(case["leafIdx"], case["treeSize"]) == args[3]


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: c["file"])
def test_consistency_vectors(case):
    args = (case["size1"], case["size2"], [b64(p) for p in case["proof"] or []],
            b64(case["root1"]), b64(case["root2"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)
        tree = MemoryTree(leaf_hash(x) for x in LEAVES)
        if tree.root(case["size2"]) == args[4] and tree.root(case["size1"]) == args[3]:
            assert tree.consistency(case["size1"], case["size2"]) == args[2]


def test_every_proof_of_the_reference_tree_verifies():
    tree = MemoryTree(leaf_hash(x) for x in LEAVES)
    for n in range(1, 9):
        for i in range(n):
            verify_inclusion(i, n, leaf_hash(LEAVES[i]), tree.inclusion(i, n), bytes.fromhex(ROOTS[n]))
        for m in range(1, n + 1):
            verify_consistency(m, n, tree.consistency(m, n), bytes.fromhex(ROOTS[m]), bytes.fromhex(ROOTS[n]))


def _flip(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    p = list(proof)
    b = bytearray(p[i])
    b[bit // 8 % 32] ^= 1 << (bit % 8)
    p[i] = bytes(b)
    return p


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_random_logs_every_proof_verifies_and_tampered_ones_fail(n, data):
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    tree = MemoryTree(leaves)
    assert tree.root() == MemoryTree(leaves).subtree(0, n)
    m = data.draw(st.integers(1, n))
    i = data.draw(st.integers(0, m - 1))
    root_m, root_n = tree.root(m), tree.root()
    proof = tree.inclusion(i, m)
    verify_inclusion(i, m, leaves[i], proof, root_m)
    cons = tree.consistency(m, n)
    verify_consistency(m, n, cons, root_m, root_n)
    if proof:  # a flipped bit anywhere, a dropped or an extra node: refused
        k = data.draw(st.integers(0, len(proof) - 1))
        for bad in (_flip(proof, k, data.draw(st.integers(0, 255))), proof[:-1], [*proof, proof[0]]):
            with pytest.raises(ProofError):
                verify_inclusion(i, m, leaves[i], bad, root_m)
    if m > 1:
        with pytest.raises(ProofError):
            verify_inclusion(i, m, leaves[(i + 1) % m], proof, root_m)  # another leaf
    if cons:
        k = data.draw(st.integers(0, len(cons) - 1))
        for bad in (_flip(cons, k, data.draw(st.integers(0, 255))), cons[:-1], [*cons, cons[0]]):
            with pytest.raises(ProofError):
                verify_consistency(m, n, bad, root_m, root_n)
    if m < n:
        with pytest.raises(ProofError):
            verify_consistency(m, n, cons, tree.root(m - 1) if m > 1 else b"\0" * 32, root_n)


def test_frontier_matches_the_tree_and_reports_completed_subtrees():
    f, tree, seen = Frontier(), MemoryTree(), {}
    for i in range(70):
        leaf = leaf_hash(bytes([i]))
        for level, index, h in f.append(leaf):
            seen[(level, index)] = h
        tree.append(leaf)
        assert f.root() == tree.root() and f.size == i + 1
        assert Frontier(f.size, f.nodes).root() == f.root()
    assert seen[(6, 0)] == tree.subtree(0, 64) and seen[(2, 16)] == tree.subtree(64, 68)
    with pytest.raises(ValueError):
        Frontier(3, [b"x"])
