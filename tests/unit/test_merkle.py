"""The authority's Merkle proofs, checked by an independent RFC 9162 verifier."""

import hashlib

import pytest

from authority.rekor import MerkleTree, leaf_hash


def _root_from_proof(index: int, size: int, leaf: bytes, proof: list[bytes]) -> bytes:
    # RFC 9162 section 2.1.3.2
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise AssertionError("proof too long")
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    assert sn == 0, "proof too short"
    return r


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 33])
def test_every_inclusion_proof_leads_to_the_root(size: int) -> None:
    tree = MerkleTree()
    leaves = [leaf_hash(f"entry {i}".encode()) for i in range(size)]
    for leaf in leaves:
        tree.append(leaf)
    root = tree.root(0, size)
    for index, leaf in enumerate(leaves):
        assert _root_from_proof(index, size, leaf, tree.inclusion_path(index, 0, size)) == root


def test_old_roots_stay_stable_as_the_log_grows() -> None:
    tree = MerkleTree()
    roots = []
    for i in range(20):
        tree.append(leaf_hash(bytes([i])))
        roots.append(tree.root(0, i + 1))
    assert [tree.root(0, n + 1) for n in range(20)] == roots
    assert len(set(roots)) == 20
