"""Rekor v1 side: an append-only transparency log with SETs, inclusion proofs and checkpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from authority._crypto import b64, key_id, sign_sha256
from authority.state import AuthorityState


class EntryError(Exception):
    """The proposed entry is malformed or its signature does not verify."""


def leaf_hash(body: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + body).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below n (RFC 6962 section 2.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class MerkleTree:
    """RFC 6962 tree over a growing list of leaf hashes."""

    def __init__(self) -> None:
        self._leaves: list[bytes] = []
        self._cache: dict[tuple[int, int], bytes] = {}

    def __len__(self) -> int:
        return len(self._leaves)

    def append(self, leaf: bytes) -> None:
        self._leaves.append(leaf)

    def root(self, start: int, end: int) -> bytes:
        if end - start == 1:
            return self._leaves[start]
        cached = self._cache.get((start, end))
        if cached is None:
            k = _split(end - start)
            cached = _node_hash(self.root(start, start + k), self.root(start + k, end))
            # Complete subtrees never change once the log has grown past them.
            if (end - start) & (end - start - 1) == 0:
                self._cache[(start, end)] = cached
        return cached

    def inclusion_path(self, index: int, start: int, end: int) -> list[bytes]:
        """Audit path for leaf `index` in leaves[start:end], bottom-up."""
        if end - start == 1:
            return []
        k = _split(end - start)
        if index < start + k:
            return self.inclusion_path(index, start, start + k) + [self.root(start + k, end)]
        return self.inclusion_path(index, start + k, end) + [self.root(start, start + k)]


def _canonical_hashedrekord(spec: dict) -> tuple[bytes, x509.Certificate, bytes, bytes]:
    try:
        sig = base64.b64decode(spec["signature"]["content"], validate=True)
        cert_pem = base64.b64decode(spec["signature"]["publicKey"]["content"], validate=True)
        digest_alg = spec["data"]["hash"]["algorithm"]
        digest = bytes.fromhex(spec["data"]["hash"]["value"])
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (KeyError, TypeError, ValueError) as exc:
        raise EntryError(f"malformed hashedrekord spec: {exc}") from None
    if digest_alg != "sha256" or len(digest) != 32:
        raise EntryError("hashedrekord data hash must be a sha256 digest")
    body: dict[str, Any] = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
            "signature": {"content": b64(sig), "publicKey": {"content": b64(cert_pem)}},
        },
    }
    return rfc8785.dumps(body), cert, sig, digest


def _pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def canonical_body(proposed: dict) -> bytes:
    """Validate a proposed entry and return the canonical body Rekor would store."""
    kind, version, spec = proposed.get("kind"), proposed.get("apiVersion"), proposed.get("spec")
    if not isinstance(spec, dict):
        raise EntryError("proposed entry has no spec")
    if (kind, version) == ("hashedrekord", "0.0.1"):
        body, cert, sig, digest = _canonical_hashedrekord(spec)
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise EntryError("only ECDSA signing keys are supported")
        try:
            key.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except InvalidSignature:
            raise EntryError("signature does not verify against the certificate's key") from None
        return body
    if (kind, version) == ("dsse", "0.0.1"):
        try:
            content = spec["proposedContent"]
            envelope_json = content["envelope"]
            envelope = json.loads(envelope_json)
            verifiers = [base64.b64decode(v, validate=True) for v in content["verifiers"]]
            payload = base64.b64decode(envelope["payload"], validate=True)
            signatures = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
            certs = [x509.load_pem_x509_certificate(v) for v in verifiers]
        except (KeyError, TypeError, ValueError) as exc:
            raise EntryError(f"malformed dsse spec: {exc}") from None
        if len(certs) != 1 or not signatures:
            raise EntryError("dsse entry needs exactly one verifier and at least one signature")
        key = certs[0].public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise EntryError("only ECDSA verifiers are supported")
        for sig in signatures:
            try:
                key.verify(sig, _pae(envelope["payloadType"], payload), ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                raise EntryError("dsse signature does not verify against the verifier") from None
        dsse_body: dict[str, Any] = {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(envelope_json.encode()).hexdigest(),
                },
                "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
                "signatures": [{"signature": b64(s), "verifier": b64(verifiers[0])} for s in signatures],
            },
        }
        return rfc8785.dumps(dsse_body)
    raise EntryError(f"unsupported entry kind {kind}/{version}: use hashedrekord/0.0.1 or dsse/0.0.1")


@dataclass(frozen=True)
class StoredEntry:
    index: int
    body: bytes
    integrated_time: int


class TransparencyLog:
    """Append-only log persisted as JSON lines in the authority's `log/` directory."""

    def __init__(self, state: AuthorityState) -> None:
        self._state = state
        self._path = state.log_dir / "entries.jsonl"
        self._lock = threading.Lock()
        self._entries: list[StoredEntry] = []
        self._tree = MerkleTree()
        self._by_uuid: dict[str, int] = {}
        self.log_id = key_id(state.rekor_key.public_key())
        # Seconds added to integratedTime; tests use it to log an entry after its certificate expired.
        self.clock_offset = 0
        state.log_dir.mkdir(exist_ok=True)
        if self._path.exists():
            for line in self._path.read_text().splitlines():
                if line.strip():
                    raw = json.loads(line)
                    self._remember(base64.b64decode(raw["body"]), raw["integratedTime"])

    def _remember(self, body: bytes, integrated_time: int) -> StoredEntry:
        entry = StoredEntry(len(self._entries), body, integrated_time)
        self._entries.append(entry)
        leaf = leaf_hash(body)
        self._tree.append(leaf)
        self._by_uuid[leaf.hex()] = entry.index
        return entry

    def append(self, proposed: dict) -> dict:
        """Validate, log and return the entry in Rekor's response shape."""
        body = canonical_body(proposed)
        with self._lock:
            entry = self._remember(body, int(time.time()) + self.clock_offset)
            with self._path.open("a") as f:
                f.write(json.dumps({"body": b64(body), "integratedTime": entry.integrated_time}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return self._response(entry, len(self._entries))

    def by_uuid(self, uuid: str) -> dict | None:
        with self._lock:
            index = self._by_uuid.get(uuid[-64:].lower())
            return None if index is None else self._response(self._entries[index], len(self._entries))

    def by_index(self, index: int) -> dict | None:
        with self._lock:
            if not 0 <= index < len(self._entries):
                return None
            return self._response(self._entries[index], len(self._entries))

    def info(self) -> dict:
        with self._lock:
            size = len(self._entries)
            root = self._tree.root(0, size) if size else hashlib.sha256(b"").digest()
            return {
                "rootHash": root.hex(),
                "treeSize": size,
                "signedTreeHead": self._checkpoint(size, root),
                "treeID": self._state.origin.rsplit(" ", 1)[-1],
            }

    def _checkpoint(self, size: int, root: bytes) -> str:
        note = f"{self._state.origin}\n{size}\n{b64(root)}\n"
        sig = sign_sha256(self._state.rekor_key, note.encode())
        name = self._state.origin.split(" ", 1)[0]
        return f"{note}\n\u2014 {name} {b64(self.log_id[:4] + sig)}\n"

    def _response(self, entry: StoredEntry, tree_size: int) -> dict:
        root = self._tree.root(0, tree_size)
        proof = self._tree.inclusion_path(entry.index, 0, tree_size)
        log_id_hex = self.log_id.hex()
        promise: dict[str, Any] = {
            "body": b64(entry.body),
            "integratedTime": entry.integrated_time,
            "logID": log_id_hex,
            "logIndex": entry.index,
        }
        set_sig = sign_sha256(self._state.rekor_key, rfc8785.dumps(promise))
        return {
            leaf_hash(entry.body).hex(): {
                **promise,
                "verification": {
                    "inclusionProof": {
                        "checkpoint": self._checkpoint(tree_size, root),
                        "hashes": [h.hex() for h in proof],
                        "logIndex": entry.index,
                        "rootHash": root.hex(),
                        "treeSize": tree_size,
                    },
                    "signedEntryTimestamp": b64(set_sig),
                },
            }
        }

