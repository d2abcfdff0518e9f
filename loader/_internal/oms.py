"""The verifier's side of the OpenSSF Model Signing specification v1.0 (OMS, ossf/model-signing-spec
`spec/v1.0.md`), for what `model_signing` 1.1.1 does not check itself.

Each refusal names the section of the rule it breaks. Where model_signing 1.1.1, the signer the
loader's users have, writes something the specification words differently, the variant is
accepted and named here (and in docs/signing-methods.md): a single file's resource named `.`, a
shard's algorithm named `<hash>-sharded-<size>`, `shard_size` written as a float, shards of one
file in byte order rather than in code-point order of their names.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from loader.errors import VerificationFailed

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
LEGACY_PREDICATE_TYPE = "https://model_signing/Digests/v0.1"  # §5.1: verifiers MAY accept it
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUNDLE_MEDIA_TYPES = (
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
)
# §7 and the algorithm registry: identifier -> length of the hex digest.
HASH_TYPES = {"sha256": 64, "blake2b": 128, "blake3": 64}
# §6.2: excluded by default, as top-level components of the model root.
DEFAULT_EXCLUSIONS = (".git", ".gitignore", ".gitattributes", ".github")
SINGLE_FILE = "."  # model_signing 1.1.1's name for the only resource of a one-file model
_GLOB = "*?["
_MATERIAL = ("publicKey", "x509CertificateChain", "certificate")


def _refuse(section: str, what: str) -> VerificationFailed:
    return VerificationFailed(f"OMS v1.0 §{section}: {what}")


def ignore_path_problem(path: str) -> str:
    """Why `path` is not an ignore path (§6.2.1: exact relative paths, '/' separated, no globs,
    no leading '/', no '..'); empty if it is one."""
    if not path:
        return "an ignore path is empty"
    if path.startswith("/"):
        return f"ignore path {path!r} starts with '/': it must be relative to the model directory"
    if any(char in path for char in _GLOB):
        return f"ignore path {path!r} holds a glob character ({' '.join(_GLOB)}): ignore paths are exact paths"
    if ".." in path.split("/"):
        return f"ignore path {path!r} has a '..' component: it must stay inside the model directory"
    return ""


def path_problem(name: str) -> str:
    """Why `name` is not a canonical resource path (§6.1.2); empty if it is one."""
    if not name:
        return "a resource name is empty"
    if name.startswith("/"):
        return f"resource {name!r} is absolute (§6.1.2 rule 2)"
    if name.endswith("/"):
        return f"resource {name!r} ends with '/' (§6.1.2 rule 4)"
    parts = name.split("/")
    if ".." in parts:
        return f"resource {name!r} has a '..' component (§6.1.2 rule 2)"
    if "" in parts or "." in parts:
        return f"resource {name!r} is not normalized: empty or '.' components (§6.1.2 rule 3)"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"resource {name!r} is not valid UTF-8 (§6.1.2 rule 7)"
    return ""


def _document(bundle_json: bytes) -> dict[str, Any]:
    try:
        document = json.loads(bundle_json)
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict):
        raise _refuse("8.1", "the bundle is not a JSON object (Sigstore bundle format)")
    return document


def check_bundle(bundle_json: bytes) -> None:
    """The bundle's shape (§4, §4.1, §8.1), before its signature is verified."""
    document = _document(bundle_json)
    media_type = document.get("mediaType")
    if media_type not in BUNDLE_MEDIA_TYPES:
        raise _refuse("8.1", f"mediaType {media_type!r} is not a Sigstore bundle media type")
    material = document.get("verificationMaterial")
    if not isinstance(material, dict):
        raise _refuse("4.1", "the bundle has no verificationMaterial")
    present = [name for name in _MATERIAL if material.get(name)]
    if len(present) != 1:
        raise _refuse("4.1", f"verificationMaterial must hold one of {', '.join(_MATERIAL)}; it holds {present or 'none'}")
    entries = material.get("tlogEntries")
    if present == ["certificate"] and not (isinstance(entries, list) and entries):
        raise _refuse("4.1", "a sigstore bundle (verificationMaterial.certificate) needs at least one tlogEntries entry")
    if present == ["x509CertificateChain"] and entries and media_type.endswith("v0.3+json"):
        raise _refuse(
            "4.1", "a v0.3 bundle with tlogEntries is the sigstore method, which carries `certificate`, "
            "not x509CertificateChain (§11.1: the field must match the method)",
        )
    envelope = document.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise _refuse("4", "the bundle has no dsseEnvelope")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise _refuse("6.7", f"payloadType {envelope.get('payloadType')!r} is not {PAYLOAD_TYPE!r}")
    if predicate_type(bundle_json) not in (PREDICATE_TYPE, LEGACY_PREDICATE_TYPE):
        raise _refuse("5.1", f"predicateType {predicate_type(bundle_json)!r} is not {PREDICATE_TYPE!r}")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures or not all(isinstance(s, dict) and s.get("sig") for s in signatures):
        raise _refuse("4", "the DSSE envelope carries no signature")
    payload(bundle_json)


def payload(bundle_json: bytes) -> bytes:
    """The DSSE payload (the in-toto statement) of a bundle."""
    envelope = _document(bundle_json).get("dsseEnvelope") or {}
    try:
        return base64.b64decode(envelope.get("payload", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise _refuse("6.7", "the DSSE payload is not base64") from None


def predicate_type(bundle_json: bytes) -> str:
    """The statement's predicateType, or '' (read before verification only to pick how to verify)."""
    try:
        statement = json.loads(payload(bundle_json))
    except (ValueError, VerificationFailed):
        return ""
    return str(statement.get("predicateType", "")) if isinstance(statement, dict) else ""


def check_statement(statement_json: bytes) -> None:
    """The signed statement (§5, §6, §7, §8.3), once its signature is verified."""
    try:
        statement = json.loads(statement_json)
    except (ValueError, UnicodeDecodeError):
        statement = None
    if not isinstance(statement, dict):
        raise _refuse("8.3", "the DSSE payload is not a JSON object (in-toto statement)")
    if statement.get("_type") != STATEMENT_TYPE:
        raise _refuse("8.3", f"_type {statement.get('_type')!r} is not {STATEMENT_TYPE!r}")
    if statement.get("predicateType") == LEGACY_PREDICATE_TYPE:
        return  # the deprecated v0.1 layout (§5.1, §11): model_signing reads it; no v1.0 rules apply
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise _refuse("5.1", f"predicateType {statement.get('predicateType')!r} is not {PREDICATE_TYPE!r}")
    subject = statement.get("subject")
    if not (isinstance(subject, list) and len(subject) == 1 and isinstance(subject[0], dict)):
        raise _refuse("6.5", "the statement's subject must hold exactly one entry")
    digest = subject[0].get("digest")
    if not (isinstance(subject[0].get("name"), str) and subject[0]["name"]) or not (
        isinstance(digest, dict) and _hex(digest.get("sha256"), 64)
    ):
        raise _refuse("6.5", "the subject needs a non-empty name and a sha256 root digest")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict) or not isinstance(predicate.get("serialization"), dict):
        raise _refuse("5.2", "the predicate needs resources and serialization")
    shard = _check_serialization(predicate["serialization"])
    resources = predicate.get("resources")
    if not isinstance(resources, list) or not resources:
        raise _refuse("5.2.1", "resources is empty: an empty model is rejected (§6.1)")
    _check_resources(resources, str(predicate["serialization"]["hash_type"]), shard)


def _hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value)


def _check_serialization(serialization: dict[str, Any]) -> int:
    """§5.2.2 and §7; the shard size (0 for `files`)."""
    method = serialization.get("method")
    if method not in ("files", "shards"):
        raise _refuse("5.2.2", f"serialization method {method!r} is neither 'files' nor 'shards'")
    hash_type = serialization.get("hash_type")
    if hash_type not in HASH_TYPES:
        raise _refuse("7", f"hash_type {hash_type!r} is not in the algorithm registry ({', '.join(HASH_TYPES)})")
    if not isinstance(serialization.get("allow_symlinks"), bool):
        raise _refuse("5.2.2", "serialization.allow_symlinks (a boolean) is required")
    ignore = serialization.get("ignore_paths", [])
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise _refuse("5.2.2", "serialization.ignore_paths must be a list of paths")
    for path in ignore:
        if problem := ignore_path_problem(path):
            raise _refuse("6.2.1", problem)
    size = serialization.get("shard_size")
    if method == "files":
        if "shard_size" in serialization:
            raise _refuse("5.2.2", "shard_size must be absent when method is 'files'")
        return 0
    # model_signing 1.1.1 writes the integer as a float (1000.0).
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size != int(size) or size < 1:
        raise _refuse("5.2.2", f"shard_size {size!r} must be a positive integer when method is 'shards'")
    return int(size)


def _check_resources(resources: list[Any], hash_type: str, shard: int) -> None:
    """§5.2.1, §6.1.2, §6.3.2 and §7 for each resource; their order and uniqueness."""
    keys: list[tuple[str, int]] = []
    algorithms = {hash_type, f"{hash_type}-sharded-{shard}"} if shard else {hash_type}
    for resource in resources:
        if not isinstance(resource, dict) or not isinstance(resource.get("name"), str):
            raise _refuse("5.2.1", "each resource needs a name, a digest and an algorithm")
        name = resource["name"]
        if resource.get("algorithm") not in algorithms:
            raise _refuse("7", f"resource {name!r} has algorithm {resource.get('algorithm')!r}, not the hash_type {hash_type!r}")
        if not _hex(resource.get("digest"), HASH_TYPES[hash_type]):
            raise _refuse("5.2.1", f"resource {name!r} has no lowercase hex {hash_type} digest")
        path, start = name, 0
        if shard:
            path, start = _shard(name, shard)
        if path == SINGLE_FILE and len(resources) == 1 and not shard:
            return
        if problem := path_problem(path):
            raise _refuse("6.1.2", problem)
        keys.append((path, start))
    if shard:
        names = [str(r["name"]) for r in resources]
        # The specification's order (code points of the whole name), or model_signing's (by file,
        # then by byte range: `a:900:1000` before `a:1000:1100`); either way, no repeats.
        if keys != sorted(set(keys)) and names != sorted(set(names)):
            raise _refuse("6.4", "resources are not sorted by name (or by file and byte range), or repeat one")
    elif [path for path, _ in keys] != sorted({path for path, _ in keys}):
        raise _refuse("5.2.1", "resources are not sorted by name in code-point order, or name a file twice")


def _shard(name: str, shard: int) -> tuple[str, int]:
    """§6.3.2: `<path>:<start>:<end>`, the range found from the right (paths may hold ':')."""
    path, _, rest = name.rpartition(":")
    path, _, start_text = path.rpartition(":")
    if not (path and start_text.isascii() and start_text.isdigit() and rest.isascii() and rest.isdigit()):
        raise _refuse("6.3.2", f"shard resource {name!r} is not <path>:<start>:<end>")
    start, end = int(start_text), int(rest)
    if start % shard or not 0 < end - start <= shard:
        raise _refuse("6.3.2", f"shard resource {name!r} is not a range of at most {shard} bytes starting at a multiple of it")
    return path, start
