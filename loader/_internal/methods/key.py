"""A public key (`model_signing sign key`): an EC key the operator configured on the loader by
name (`serve --public-key NAME=FILE`); no certificate, no transparency log."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from model_signing import manifest as ms_manifest
from model_signing._signing import sign_sigstore_pb, signing

from loader._internal.methods.base import SignedBy, SigningMethod, first_vouching
from loader.signers import Signer

if TYPE_CHECKING:
    from loader._internal.verify import TrustRoots


class InMemory:
    """What `Signature.read` needs of a path, over bytes already read (read once)."""

    def __init__(self, data: bytes) -> None:
        self._text = data.decode("utf-8")

    def read_text(self, encoding: str = "utf-8") -> str:
        return self._text


def read_protobuf_signature(bundle_json: bytes) -> signing.Signature:
    """A bundle signed without Sigstore keyless, as model_signing's verifiers read it."""
    return sign_sigstore_pb.Signature.read(cast(Path, InMemory(bundle_json)))


class Key(SigningMethod):
    name = "key"
    bundle_title = "a model-signing bundle signed with a public key"

    def carries(self, material: Mapping[str, Any]) -> bool:
        return "publicKey" in material

    def read_signature(self, bundle_json: bytes) -> signing.Signature:
        return read_protobuf_signature(bundle_json)

    def verify(
        self, signature: signing.Signature, signers: list[Signer], roots: TrustRoots, trust_root: str
    ) -> tuple[ms_manifest.Manifest, SignedBy]:
        signed, signer = first_vouching(
            signature, signers, lambda signer: roots.keys.key(signer.key),
            lambda signer, detail: (
                f"not signed by the key {signer.key!r}: signed by another key, or altered after signing ({detail})"
            ),
        )
        return signed, SignedBy(self.name, f"public key {signer.key!r}", "", signer.key)


METHOD = Key()
