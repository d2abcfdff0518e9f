"""The verifier's side of the OpenSSF Model Signing specification v1.0 (ossf/model-signing-spec,
spec/v1.0.md): one test per MUST, each with a crafted directory or a crafted, really signed bundle,
plus the specification's test vectors and model-transparency's signed v1.1.0 directories
(tests/data/oms, see SOURCE.md there).

Crafted bundles are signed here with a P-256 key as the `key` method (DSSE over the statement),
so each one's signature verifies and only the rule under test can refuse it; every case's
unaltered twin verifies (the control).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from loader._internal.keys import SigningKeys
from loader._internal.verify import Signer, TrustRoots, Verified, production_root_file, verify_bundle, verify_directory
from loader.errors import BadRequest, LoaderError, VerificationFailed
from tests.support import PYTHON, ROOT

DATA = ROOT / "tests" / "data" / "oms"
MT = DATA / "model-transparency"
VECTORS = DATA / "spec-test-vectors"
MT_IDENTITY = ("stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2")


# --- crafted, signed bundles ---------------------------------------------------------------


class Crafter:
    """Signs any statement as an OMS `key` bundle with one P-256 key the loader knows as 'k'."""

    def __init__(self, folder: Path, curve: ec.EllipticCurve | None = None) -> None:
        self.key = ec.generate_private_key(curve or ec.SECP256R1())
        self.hash = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[self.key.curve.key_size]
        public = self.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (folder / "k.pub").write_bytes(public)
        self.roots = TrustRoots({"production": production_root_file()}, "production", SigningKeys({"k": folder / "k.pub"}))
        self.hint = hashlib.sha256(public).hexdigest()

    def bundle(self, statement: dict[str, Any], alter: Callable[[dict[str, Any]], None] | None = None, keyid: object = "") -> bytes:
        payload = json.dumps(_sealed(statement)).encode()
        payload_type = "application/vnd.in-toto+json"
        pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)
        signature: dict[str, object] = {"sig": base64.b64encode(self.key.sign(pae, ec.ECDSA(self.hash))).decode()}
        if keyid != "absent":
            signature["keyid"] = keyid
        bundle: dict[str, Any] = {
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"publicKey": {"hint": self.hint}, "tlogEntries": []},
            "dsseEnvelope": {"payload": base64.b64encode(payload).decode(), "payloadType": payload_type, "signatures": [signature]},
        }
        if alter is not None:
            alter(bundle)
        return json.dumps(bundle).encode()

    def verify(self, bundle: bytes, directory: Path, ignore_paths: tuple[str, ...] = (), signature: Path | None = None) -> Verified:
        return verify_directory(bundle, [Signer(key="k")], self.roots, directory, ignore_paths=ignore_paths, signature=signature)


@pytest.fixture(scope="module")
def crafter(tmp_path_factory: pytest.TempPathFactory) -> Crafter:
    return Crafter(tmp_path_factory.mktemp("oms-key"))


FILES = {"a.bin": b"weights " * 300, "sub/b.txt": b"vocabulary\n", "z.json": b"{}"}


def _model(folder: Path, files: dict[str, bytes] = FILES) -> Path:
    model = folder / "model"
    for name, data in files.items():
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_bytes(data)
    return model


def _statement(files: dict[str, bytes] = FILES, **serialization: object) -> dict[str, Any]:
    """The statement model_signing would sign over `files` (sha256, method files)."""
    resources = [{"name": n, "algorithm": "sha256", "digest": hashlib.sha256(d).hexdigest()} for n, d in sorted(files.items())]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "model", "digest": {"sha256": root}}],
        "predicateType": "https://model_signing/signature/v1.0",
        "predicate": {
            "resources": resources,
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": [], **serialization},
        },
    }


def _sealed(statement: dict[str, Any]) -> dict[str, Any]:
    """The statement with its subject's root digest over its resources as they are (§6.5.1)."""
    sealed = copy.deepcopy(statement)
    resources = (sealed.get("predicate") or {}).get("resources") or []
    try:
        root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    except (ValueError, KeyError, TypeError):
        return sealed  # a resource without a hex digest: the case under test
    for subject in sealed.get("subject") or []:
        subject["digest"] = {"sha256": root}
    return sealed


def _shards(files: dict[str, bytes], size: int) -> dict[str, Any]:
    statement = _statement(files)
    statement["predicate"]["serialization"].update(method="shards", shard_size=size)
    resources = []
    for name, data in sorted(files.items()):
        for start in range(0, len(data), size):
            piece = data[start : start + size]
            resources.append({"name": f"{name}:{start}:{start + len(piece)}", "algorithm": "sha256", "digest": hashlib.sha256(piece).hexdigest()})
    statement["predicate"]["resources"] = resources
    return statement


def test_the_crafted_control_verifies(crafter: Crafter, tmp_path: Path) -> None:
    model = _model(tmp_path)
    verified = crafter.verify(crafter.bundle(_statement()), model)
    assert sorted(verified.verified_files) == sorted(FILES)
    assert verified.signing_method == "key"


def _resources(s: dict[str, Any]) -> list[dict[str, Any]]:
    return s["predicate"]["resources"]  # type: ignore[no-any-return]


def _serialization(s: dict[str, Any]) -> dict[str, Any]:
    return s["predicate"]["serialization"]  # type: ignore[no-any-return]


def _rename(index: int, name: str) -> Callable[[dict[str, Any]], None]:
    return lambda s: _resources(s)[index].update(name=name)


# (statement alteration, words the refusal must contain): each MUST about the signed statement.
STATEMENT_RULES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "statement-type": (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "§8.3: _type"),
    "subject-exactly-one": (lambda s: s["subject"].append(dict(s["subject"][0])), "§6.5"),
    "subject-name-non-empty": (lambda s: s["subject"][0].update(name=""), "§6.5"),
    "resources-non-empty": (lambda s: s["predicate"].update(resources=[]), "§5.2.1: resources is empty"),
    "resources-sorted": (lambda s: _resources(s).reverse(), "§5.2.1: resources are not sorted"),
    "resources-unique": (lambda s: _resources(s).insert(1, dict(_resources(s)[0])), "§5.2.1: resources are not sorted"),
    "path-relative": (_rename(0, "/a.bin"), "§6.1.2: resource '/a.bin' is absolute"),
    "path-no-parent": (_rename(0, "../a.bin"), "§6.1.2: resource '../a.bin' has a '..' component"),
    "path-normalized-dot": (_rename(0, "./a.bin"), "§6.1.2: resource './a.bin' is not normalized"),
    "path-normalized-separators": (_rename(1, "sub//b.txt"), "§6.1.2: resource 'sub//b.txt' is not normalized"),
    "path-no-trailing-slash": (_rename(1, "sub/"), "§6.1.2: resource 'sub/' ends with '/'"),
    "path-utf8": (_rename(0, "a\udcff.bin"), "is not valid UTF-8 (§6.1.2 rule 7)"),
    "digest-hex": (lambda s: _resources(s)[0].update(digest="XYZ"), "§5.2.1: resource 'a.bin' has no lowercase hex sha256 digest"),
    "method-files-or-shards": (lambda s: _serialization(s).update(method="zip"), "§5.2.2: serialization method 'zip'"),
    "hash-type-registry": (lambda s: _serialization(s).update(hash_type="md5"), "§7: hash_type 'md5' is not in the algorithm registry"),
    "hash-type-registry-blake2": (lambda s: _serialization(s).update(hash_type="blake2"), "§7: hash_type 'blake2'"),
    "algorithm-is-hash-type": (lambda s: _resources(s)[0].update(algorithm="blake3"), "§7: resource 'a.bin' has algorithm 'blake3'"),
    "shard-size-absent-for-files": (lambda s: _serialization(s).update(shard_size=1000), "§5.2.2: shard_size must be absent"),
    "shard-size-required-for-shards": (lambda s: _serialization(s).update(method="shards"), "§5.2.2: shard_size None must be a positive integer"),
    "shard-size-positive": (lambda s: _serialization(s).update(method="shards", shard_size=0), "§5.2.2: shard_size 0"),
    "allow-symlinks-required": (lambda s: _serialization(s).pop("allow_symlinks"), "§5.2.2: serialization.allow_symlinks"),
    "ignore-path-no-glob": (lambda s: _serialization(s).update(ignore_paths=["*.md"]), "§6.2.1: ignore path '*.md' holds a glob"),
    "ignore-path-no-leading-slash": (lambda s: _serialization(s).update(ignore_paths=["/etc"]), "§6.2.1: ignore path '/etc' starts with '/'"),
    "ignore-path-no-parent": (lambda s: _serialization(s).update(ignore_paths=["../x"]), "§6.2.1: ignore path '../x' has a '..'"),
}


@pytest.mark.parametrize("rule", sorted(STATEMENT_RULES))
def test_a_signed_statement_breaking_a_must_is_refused_naming_the_rule(crafter: Crafter, tmp_path: Path, rule: str) -> None:
    alter, words = STATEMENT_RULES[rule]
    statement = _statement()
    alter(statement)
    with pytest.raises(VerificationFailed, match="OMS v1.0 §") as refused:
        crafter.verify(crafter.bundle(statement), _model(tmp_path))
    assert words in str(refused.value)


# (bundle alteration, words): each MUST about the bundle around the statement.
BUNDLE_RULES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "media-type": (lambda b: b.update(mediaType="application/json"), "§8.1: mediaType 'application/json'"),
    "one-verification-material": (
        lambda b: b["verificationMaterial"].update(x509CertificateChain={"certificates": [{"rawBytes": "AA=="}]}), "§4.1: verificationMaterial must hold one of",
    ),
    "sigstore-needs-tlog-entries": (
        lambda b: b.update(verificationMaterial={"certificate": {"rawBytes": "AA=="}, "tlogEntries": []}), "§4.1: a sigstore bundle",
    ),
    "payload-type-in-toto": (lambda b: b["dsseEnvelope"].update(payloadType="text/plain"), "§6.7: payloadType 'text/plain'"),
    "predicate-type": (
        lambda b: b["dsseEnvelope"].update(payload=base64.b64encode(json.dumps({**_statement(), "predicateType": "https://x/v1"}).encode()).decode()),
        "§5.1: predicateType 'https://x/v1'",
    ),
}


@pytest.mark.parametrize("rule", sorted(BUNDLE_RULES))
def test_a_bundle_breaking_a_must_is_refused_naming_the_rule(crafter: Crafter, tmp_path: Path, rule: str) -> None:
    alter, words = BUNDLE_RULES[rule]
    with pytest.raises(VerificationFailed, match="OMS v1.0 §") as refused:
        crafter.verify(crafter.bundle(_statement(), alter), _model(tmp_path))
    assert words in str(refused.value)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()], ids=lambda c: c.name)
def test_every_key_type_of_the_registry_verifies(tmp_path: Path, curve: ec.EllipticCurve) -> None:
    """Algorithm registry: P-256, P-384 and P-521 MUST be supported for the key method."""
    crafter = Crafter(tmp_path, curve)
    assert crafter.verify(crafter.bundle(_statement()), _model(tmp_path)).verified_files


@pytest.mark.parametrize("keyid", ["absent", "", None])
def test_keyid_may_be_absent_empty_or_null(crafter: Crafter, tmp_path: Path, keyid: object) -> None:
    """§4.1: verifiers MUST accept any of absent, "" or null."""
    assert crafter.verify(crafter.bundle(_statement(), keyid=keyid), _model(tmp_path)).verified_files


def test_a_statement_without_ignore_paths_is_accepted(crafter: Crafter, tmp_path: Path) -> None:
    """§11.1: serialization.ignore_paths MUST be accepted absent (pre-v1.1.0)."""
    statement = _statement()
    _serialization(statement).pop("ignore_paths")
    assert crafter.verify(crafter.bundle(statement), _model(tmp_path)).verified_files


# --- what lies on disk ------------------------------------------------------------------------


def test_files_not_covered_fail_verification(crafter: Crafter, tmp_path: Path) -> None:
    """§6.2.1, §8.5: a file neither in resources nor ignored fails verification."""
    model = _model(tmp_path)
    (model / "extra.pkl").write_bytes(b"unsigned")
    with pytest.raises(VerificationFailed, match=r"not covered by the signature: extra\.pkl"):
        crafter.verify(crafter.bundle(_statement()), model)
    assert crafter.verify(crafter.bundle(_statement(ignore_paths=["extra.pkl"])), model).verified_files


def test_default_exclusions_are_top_level_only(crafter: Crafter, tmp_path: Path) -> None:
    """§6.2, §6.2.1: .git, .gitignore, .gitattributes, .github at the model root are skipped (even if
    the signer did not record them); the same names deeper are not."""
    model = _model(tmp_path)
    for name in (".git/config", ".github/workflows/x.yml", ".gitignore", ".gitattributes"):
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_text("not signed")
    bundle = crafter.bundle(_statement())
    assert sorted(crafter.verify(bundle, model).verified_files) == sorted(FILES)
    (model / "sub" / ".git").mkdir()
    (model / "sub" / ".git" / "config").write_text("not signed")
    with pytest.raises(VerificationFailed, match=r"not covered by the signature: sub/\.git/config"):
        crafter.verify(bundle, model)


def test_the_signature_file_is_excluded(crafter: Crafter, tmp_path: Path) -> None:
    """§6.2: the signature file is excluded during verification, whatever its name and even if the
    signer did not record it."""
    model = _model(tmp_path)
    signature = model / "release.sig"
    signature.write_bytes(crafter.bundle(_statement()))
    assert sorted(crafter.verify(signature.read_bytes(), model, signature=signature).verified_files) == sorted(FILES)
    with pytest.raises(VerificationFailed, match=r"not covered by the signature: release\.sig"):
        crafter.verify(signature.read_bytes(), model)  # the same file, not named as the signature


def test_an_empty_model_is_rejected(crafter: Crafter, tmp_path: Path) -> None:
    """§6.1: at least one regular file after exclusions."""
    model = tmp_path / "model"
    (model / ".git").mkdir(parents=True)
    (model / ".git" / "HEAD").write_text("ref")
    with pytest.raises(VerificationFailed, match=r"§6\.1: the model directory .* holds no file to verify \(empty model\)"):
        crafter.verify(crafter.bundle(_statement()), model)


def test_a_signed_directory_entry_is_refused(crafter: Crafter, tmp_path: Path) -> None:
    """§5.2.1: resources name regular files only."""
    files = {**FILES, "sub": b"a directory"}
    model = _model(tmp_path)
    with pytest.raises(VerificationFailed, match=r"§5\.2\.1: the signed resource 'sub' is a directory"):
        crafter.verify(crafter.bundle(_statement(files)), model)


def test_paths_compare_byte_exact(crafter: Crafter, tmp_path: Path) -> None:
    """§6.1.2 rule 6: 'A.bin' on disk is not the signed 'a.bin'."""
    files = dict(FILES)
    model = _model(tmp_path, {("A.bin" if n == "a.bin" else n): d for n, d in files.items()})
    with pytest.raises(VerificationFailed, match=r"signed but missing: a\.bin; not covered by the signature: A\.bin"):
        crafter.verify(crafter.bundle(_statement(files)), model)


def test_a_file_name_that_is_not_utf8_is_refused(crafter: Crafter, tmp_path: Path) -> None:
    """§6.1.2 rule 7 (and 'verifiers MUST canonicalize paths from the local filesystem')."""
    model = _model(tmp_path)
    os.close(os.open(os.fsencode(model) + b"/caf\xe9.bin", os.O_CREAT | os.O_WRONLY, 0o600))
    with pytest.raises(VerificationFailed, match=r"§6\.1\.2: the file name 'caf\\udce9\.bin' .* is not valid UTF-8"):
        crafter.verify(crafter.bundle(_statement()), model)


@pytest.mark.parametrize("allow_symlinks", [False, True])
def test_symbolic_links_are_never_followed(crafter: Crafter, tmp_path: Path, allow_symlinks: bool) -> None:
    """§6.1.1: with allow_symlinks false a link is refused; the loader never follows links, so a
    link is refused under allow_symlinks true as well (stricter than the specification)."""
    model = _model(tmp_path)
    (model / "z.json").unlink()
    (model / "z.json").symlink_to(model / "a.bin")
    with pytest.raises(VerificationFailed, match=r"z\.json in the model directory .* is a symbolic link"):
        crafter.verify(crafter.bundle(_statement(allow_symlinks=allow_symlinks)), model)


def test_shards_follow_the_shard_size(crafter: Crafter, tmp_path: Path) -> None:
    """§6.3.2 and §8.4: ranges of shard_size bytes (the last shorter), zero-byte files omitted.
    (A path holding ':' is refused by model_signing 1.1.1's parser: fail closed, see the docs.)"""
    files = {**FILES, "w.bin": b"colon" * 50, "empty": b""}
    model = _model(tmp_path, files)
    statement = _shards(files, 100)  # byte order within a file: a:0:100, a:100:200, ..., a:1000:1100
    assert sorted(crafter.verify(crafter.bundle(statement), model).verified_files) == sorted(files)
    lexicographic = copy.deepcopy(statement)  # the specification's order: a:0:100, a:1000:1100, a:100:200
    _resources(lexicographic).sort(key=lambda r: r["name"])
    assert _resources(lexicographic) != _resources(statement)
    assert sorted(crafter.verify(crafter.bundle(lexicographic), model).verified_files) == sorted(files)
    shuffled = copy.deepcopy(statement)
    _resources(shuffled)[0], _resources(shuffled)[1] = _resources(shuffled)[1], _resources(shuffled)[0]
    with pytest.raises(VerificationFailed, match=r"§6\.4: resources are not sorted"):
        crafter.verify(crafter.bundle(shuffled), model)
    wrong_size = copy.deepcopy(statement)
    _serialization(wrong_size)["shard_size"] = 50
    with pytest.raises(VerificationFailed, match=r"§6\.3\.2: shard resource 'a\.bin:0:100' is not a range of at most 50 bytes"):
        crafter.verify(crafter.bundle(wrong_size), model)
    empty_shard = copy.deepcopy(statement)
    _resources(empty_shard).insert(3, {"name": "empty:0:0", "algorithm": "sha256", "digest": hashlib.sha256(b"").hexdigest()})
    with pytest.raises(VerificationFailed, match=r"§6\.3\.2: shard resource 'empty:0:0'"):
        crafter.verify(crafter.bundle(empty_shard), model)


@pytest.mark.parametrize("path", ["*.txt", "/etc", "../x", "sub/[ab].txt"])
def test_ignore_paths_of_a_request_follow_the_syntax(crafter: Crafter, tmp_path: Path, path: str) -> None:
    """§6.2.1: no glob characters, no leading '/', no '../' (a 400, naming the path)."""
    with pytest.raises(BadRequest, match=r"ignore path .* \(OMS v1\.0 §6\.2\.1\)"):
        crafter.verify(crafter.bundle(_statement()), _model(tmp_path), ignore_paths=(path,))


# --- the specification's test vectors ---------------------------------------------------------


@pytest.fixture(scope="module")
def mt_roots() -> TrustRoots:
    keys = SigningKeys({"mt": MT / "keys" / "signing-key-pub.pem"}, {"mt": MT / "keys" / "ca-cert.pem"})
    return TrustRoots({"production": production_root_file()}, "production", keys)


MT_SIGNERS = [Signer(key="mt"), Signer(certificate_authority="mt"), Signer(identity=MT_IDENTITY[0], issuer=MT_IDENTITY[1])]


@pytest.mark.parametrize(
    ("vector", "words"),
    [
        ("invalid/empty", "(not JSON: the Sigstore bundle format, OMS v1.0 §8.1)"),
        ("invalid/missing-envelope", "OMS v1.0 §4: the bundle has no dsseEnvelope"),
        ("invalid/missing-tlog-entries", "OMS v1.0 §4.1: a sigstore bundle (verificationMaterial.certificate) needs at least one tlogEntries"),
        ("invalid/missing-verification-material", "OMS v1.0 §4.1: the bundle has no verificationMaterial"),
        ("invalid-payload/wrong-predicate", "OMS v1.0 §5.1: predicateType 'https://example.com/wrong-predicate/v1.0'"),
    ],
)
def test_the_invalid_test_vectors_are_refused_naming_the_rule(mt_roots: TrustRoots, vector: str, words: str) -> None:
    with pytest.raises(VerificationFailed) as refused:
        verify_bundle((VECTORS / f"{vector}.bundle.json").read_bytes(), MT_SIGNERS, mt_roots)
    assert words in str(refused.value)


@pytest.mark.parametrize("vector", ["key", "certificate", "sigstore"])
def test_the_valid_test_vectors_verify(mt_roots: TrustRoots, vector: str) -> None:
    """Signature and statement: the vectors carry no model, so the directory is not compared."""
    try:
        verify_bundle((VECTORS / "valid" / f"{vector}.bundle.json").read_bytes(), MT_SIGNERS, mt_roots)
    except LoaderError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"{vector}: {exc}")


# --- model-transparency's signed v1.1.0 directories, through `python -m loader verify` ----------

MT_FLAGS = {
    "sigstore": ["--cert-identity", MT_IDENTITY[0], "--cert-oidc-issuer", MT_IDENTITY[1]],  # production Sigstore, offline
    "elliptic-key": ["--key", str(MT / "keys" / "signing-key-pub.pem")],
    "certificate": ["--certificate-chain", str(MT / "keys" / "ca-cert.pem")],
}


def _loader_verify(method: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "loader", "verify", *MT_FLAGS[method], "--ignore-path", "ignore-me", str(directory)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("method", sorted(MT_FLAGS))
def test_model_transparency_signed_directories_verify_and_a_change_is_named(tmp_path: Path, method: str) -> None:
    """No model file in these directories: `verify` verifies whatever a signed directory holds."""
    source = MT / f"v1.1.0-{method}"
    ok = _loader_verify(method, source)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK: {source} signed by") and "2 files verified" in ok.stdout
    copy_ = tmp_path / source.name
    shutil.copytree(source, copy_)
    (copy_ / "signme-1").write_bytes(b"altered\n")
    changed = _loader_verify(method, copy_)
    assert changed.returncode == 1
    assert "changed since signing: signme-1" in changed.stderr
