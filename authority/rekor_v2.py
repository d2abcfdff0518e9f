"""Rekor v2 side: the write API of a tile log (`POST /api/v2/log/entries`, hashedrekord 0.0.2).

Entries are integrated synchronously: the answer carries an inclusion proof with a C2SP
signed-note checkpoint (Ed25519) and no SET nor integrated time, so a bundle's only time
source is its RFC 3161 timestamp. DSSE envelopes arrive as hashedrekord over their PAE.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from authority._crypto import b64, note_key_id
from authority.rekor import EntryError, MerkleTree, leaf_hash
from authority.state import AuthorityState

KIND, API_VERSION = "hashedrekord", "0.0.2"
# The key details this log accepts, with the prehash each implies.
_KEY_DETAILS: dict[str, tuple[str, type[ec.EllipticCurve], hashes.HashAlgorithm]] = {
    "PKIX_ECDSA_P256_SHA_256": ("SHA2_256", ec.SECP256R1, hashes.SHA256()),
    "PKIX_ECDSA_P384_SHA_384": ("SHA2_384", ec.SECP384R1, hashes.SHA384()),
}


def canonical_body_v2(proposed: dict) -> bytes:
    """Validate a CreateEntryRequest and return the hashedrekord 0.0.2 entry body to log."""
    request = proposed.get("hashedRekordRequestV002")
    if not isinstance(request, dict) or len(proposed) != 1:
        raise EntryError("Rekor v2 accepts only hashedRekordRequestV002 (DSSE is logged as hashedrekord over its PAE)")
    try:
        digest = base64.b64decode(request["digest"], validate=True)
        signature = base64.b64decode(request["signature"]["content"], validate=True)
        verifier = request["signature"]["verifier"]
        details = verifier["keyDetails"]
        cert_der = base64.b64decode(verifier["x509Certificate"]["rawBytes"], validate=True)
        cert = x509.load_der_x509_certificate(cert_der)
    except (KeyError, TypeError, ValueError) as exc:
        raise EntryError(f"malformed hashedRekordRequestV002: {exc}") from None
    if details not in _KEY_DETAILS:
        raise EntryError(f"unsupported key details {details!r}: use one of {sorted(_KEY_DETAILS)}")
    algorithm, curve, prehash = _KEY_DETAILS[details]
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
        raise EntryError(f"the certificate's key does not match key details {details}")
    if len(digest) != prehash.digest_size:
        raise EntryError(f"digest must be {prehash.digest_size} bytes for {details}")
    try:
        key.verify(signature, digest, ec.ECDSA(Prehashed(prehash)))
    except InvalidSignature:
        raise EntryError("signature does not verify against the certificate's key") from None
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "spec": {
            "hashedRekordV002": {
                "data": {"algorithm": algorithm, "digest": b64(digest)},
                "signature": {
                    "content": b64(signature),
                    "verifier": {"keyDetails": details, "x509Certificate": {"rawBytes": b64(cert_der)}},
                },
            }
        },
    }
    return rfc8785.dumps(body)


class TileLog:
    """Append-only v2 log persisted as JSON lines (`log/v2-entries.jsonl`)."""

    def __init__(self, state: AuthorityState) -> None:
        if state.rekor_v2_key is None:
            raise ValueError("this authority has no Rekor v2 log: init it with --rekor-version 2")
        self._key = state.rekor_v2_key
        self.origin = state.rekor_v2_origin
        self.log_id = note_key_id(self.origin, self._key.public_key())
        self._path = state.log_dir / "v2-entries.jsonl"
        self._lock = threading.Lock()
        self._bodies: list[bytes] = []
        self._tree = MerkleTree()
        state.log_dir.mkdir(exist_ok=True)
        if self._path.exists():
            for line in self._path.read_text().splitlines():
                if line.strip():
                    self._remember(base64.b64decode(json.loads(line)["body"]))

    def __len__(self) -> int:
        return len(self._bodies)

    def _remember(self, body: bytes) -> int:
        self._bodies.append(body)
        self._tree.append(leaf_hash(body))
        return len(self._bodies) - 1

    def append(self, proposed: dict) -> dict:
        """Validate, integrate and return the TransparencyLogEntry (protobuf JSON)."""
        body = canonical_body_v2(proposed)
        with self._lock:
            index = self._remember(body)
            with self._path.open("a") as f:
                f.write(json.dumps({"body": b64(body)}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return self._entry(index, len(self._bodies))

    def checkpoint(self, size: int, root: bytes) -> str:
        """A C2SP signed note: origin, size, root hash; one Ed25519 signature line."""
        note = f"{self.origin}\n{size}\n{b64(root)}\n"
        signature = self._key.sign(note.encode())
        return f"{note}\n\u2014 {self.origin} {b64(self.log_id[:4] + signature)}\n"

    def _entry(self, index: int, tree_size: int) -> dict:
        root = self._tree.root(0, tree_size)
        return {
            "logIndex": str(index),
            "logId": {"keyId": b64(self.log_id)},
            "kindVersion": {"kind": KIND, "version": API_VERSION},
            "inclusionProof": {
                "logIndex": str(index),
                "rootHash": b64(root),
                "treeSize": str(tree_size),
                "hashes": [b64(h) for h in self._tree.inclusion_path(index, 0, tree_size)],
                "checkpoint": {"envelope": self.checkpoint(tree_size, root)},
            },
            "canonicalizedBody": b64(self._bodies[index]),
        }
