"""Signing methods, one module each behind `base.SigningMethod`, registered here by the method
name of their signer kind (`loader.signers.KINDS`); and the reading of a bundle that picks one."""

from __future__ import annotations

import json
from dataclasses import dataclass

from loader._internal import oms
from loader._internal.methods import certificate, key, keyless
from loader._internal.methods.base import SignedBy, SigningMethod
from loader.errors import VerificationFailed
from loader.signers import KINDS, Signer

__all__ = ["METHODS", "BundleShape", "SignedBy", "SigningMethod", "accepted", "bundle_shape"]

# Tried in this order on a bundle's verification material; keyless, which takes any material the
# others do not, is last.
METHODS: tuple[SigningMethod, ...] = (key.METHOD, certificate.METHOD, keyless.METHOD)
if sorted(m.name for m in METHODS) != sorted(kind.method for kind in KINDS):
    raise ImportError("every signer kind of loader.signers needs one signing method here, and only those")

PREDICATES = (oms.PREDICATE_TYPE, oms.LEGACY_PREDICATE_TYPE)


@dataclass(frozen=True)
class BundleShape:
    """What a bundle is, read before verification only to pick how to verify it."""

    method: SigningMethod
    model_signing: bool
    media_type: str


def bundle_shape(bundle_json: bytes) -> BundleShape:
    """Classify a bundle by its verification material and payload; raise if it is not JSON."""
    try:
        document = json.loads(bundle_json)
        material = document.get("verificationMaterial") or {}
        envelope = document.get("dsseEnvelope")
        media_type = str(document.get("mediaType", ""))
    except (ValueError, AttributeError) as exc:
        raise VerificationFailed(
            f"bundle is malformed: {str(exc).splitlines()[0]} (not JSON: the Sigstore bundle format, OMS v1.0 §8.1)"
        ) from None
    # Not a mapping: no method's material (oms.check_bundle refuses the shape, naming it).
    method = next(m for m in METHODS if m.carries(material if isinstance(material, dict) else {}))
    predicate = oms.predicate_type(bundle_json) if isinstance(envelope, dict) else ""
    # A key or a chain without a message signature (`sigstore sign` with a managed key) is only
    # ever a model-signing bundle: a wrong predicate or a missing envelope is refused as such (OMS).
    signs_a_message = "messageSignature" in document
    model_signing = predicate in PREDICATES or predicate.startswith("https://model_signing/") or (
        method.marks_model_signing and not signs_a_message
    )
    return BundleShape(method, model_signing, media_type)


def accepted(signers: list[Signer], method: SigningMethod) -> list[Signer]:
    """The policy's signers of `method`'s kind; VerificationFailed naming what the policy accepts
    if there are none."""
    chosen = [signer for signer in signers if signer.method == method.name]
    if not chosen:
        accepts = "; ".join(signer.describe() for signer in signers)
        raise VerificationFailed(f"the bundle is {method.bundle_title}, but the policy accepts only: {accepts}")
    return chosen
