"""The model-settings policy and the loader's signer kinds: one policy language everywhere."""

import dataclasses
import datetime
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from mlserver.settings import ModelParameters, ModelSettings
from sigstore.errors import VerificationError

from loader._internal.policy import Signer, certificate_facts, describe_certificate, keyless_policy
from loader._internal.verify import TrustRoots, Verified, production_root_file, verify_artefact
from loader.errors import BadRequest, VerificationFailed
from loader.proto.v1 import loader_pb2
from runtime.client import build_request
from runtime.errors import ModelRefused
from runtime.model import SigstoreModel
from runtime.settings import SignerPolicy, SigstorePolicy


def _settings(extra: dict | None) -> ModelSettings:
    return ModelSettings(
        name="m", implementation=SigstoreModel, parameters=ModelParameters(uri="/x/model.joblib", extra=extra)
    )


def test_a_valid_policy_parses() -> None:
    policy = SigstorePolicy.from_model_settings(
        _settings({"sigstore": {"signers": [{"identity": "a@example.com", "issuer": "https://i"}], "trust_root": "local"}})
    )
    assert policy.signers[0].identity == "a@example.com"
    assert policy.trust_root == "local"


def test_a_missing_policy_refuses_and_says_where_to_put_it() -> None:
    with pytest.raises(ModelRefused, match=r"parameters\.extra\.sigstore\.signers") as exc:
        SigstorePolicy.from_model_settings(_settings({"predict_fn": "predict"}))
    assert exc.value.status_code == 400


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"signers": []}, "sigstore.signers"),
        ({"signers": [{"identity": "a@example.com"}]}, "sigstore.signers.0.issuer"),
        ({"signers": [{"identity": "", "issuer": "https://i"}]}, "sigstore.signers.0.identity"),
        ({"signers": [{"identity": "a", "issuer": "i"}], "verify": False}, "sigstore.verify"),
        ({"signers": [{"identity": "a", "issuer": "i"}], "sandbox": "none"}, "sigstore.sandbox"),
    ],
)
def test_an_invalid_policy_names_the_field(policy: dict, field: str) -> None:
    with pytest.raises(ModelRefused, match=field.replace(".", r"\.")):
        SigstorePolicy.from_model_settings(_settings({"sigstore": policy}))


# --- signer kinds, the same in the runtime's policy, the gRPC contract and the loader ---

ISSUER = "https://token.actions.githubusercontent.com"
RELEASE = "https://github.com/acme/models/.github/workflows/release.yml@refs/tags/v1.4.2"


def test_the_three_shapes_of_a_signer_have_the_same_fields() -> None:
    """One conversion at each boundary: pydantic -> proto by name, proto -> dataclass by name."""
    proto = [f.name for f in loader_pb2.Signer.DESCRIPTOR.fields]
    assert sorted(proto) == sorted(SignerPolicy.model_fields) == sorted(f.name for f in dataclasses.fields(Signer))
    facts = {f.name for f in loader_pb2.VerificationFacts.DESCRIPTOR.fields}
    assert facts == {f.name for f in dataclasses.fields(Verified)}


@pytest.mark.parametrize(
    "signer",
    [
        {"identity_regexp": r"https://github\.com/acme/models/\.github/workflows/release\.yml@refs/tags/v.*", "issuer": ISSUER, "workflow_repository": "acme/models"},
        {"key": "release-key"},
        {"certificate_authority": "acme-ca"},
    ],
)
def test_every_signer_kind_parses_and_reaches_the_request_unchanged(signer: dict) -> None:
    policy = SigstorePolicy.from_model_settings(_settings({"sigstore": {"signers": [signer], "ignore_paths": ["README.md"]}}))
    request = build_request(policy, "m/model.joblib", "m")
    sent = {k: v for k, v in dataclasses.asdict(Signer(**{f.name: getattr(request.signers[0], f.name) for f in dataclasses.fields(Signer)})).items() if v}
    assert sent == signer
    assert list(request.ignore_paths) == ["README.md"]
    Signer(**sent).check()


@pytest.mark.parametrize(
    ("signer", "field"),
    [
        ({"identity": "a", "identity_regexp": "a.*", "issuer": "https://i"}, "signers.0.identity"),
        ({"identity_regexp": "(", "issuer": "https://i"}, "signers.0.identity_regexp"),
        # Matched with RE2 (linear time): no backreferences or lookaround, at most 1024 characters.
        ({"identity_regexp": r"(a)\1", "issuer": "https://i"}, "signers.0.identity_regexp"),
        ({"identity_regexp": r"(?!a).*", "issuer": "https://i"}, "signers.0.identity_regexp"),
        ({"identity_regexp": "a" * 1025, "issuer": "https://i"}, "signers.0.identity_regexp"),
        ({"identity_regexp": "a.*"}, "signers.0.issuer"),
        ({"key": "k", "issuer": "https://i"}, "signers.0.issuer"),
        ({"key": "k", "certificate_authority": "c"}, "signers.0.certificate_authority"),
        ({"certificate_authority": "c", "workflow_ref": "refs/heads/main"}, "signers.0.workflow_ref"),
        ({"key": "k", "public_key_pem": "..."}, "signers.0.public_key_pem"),
    ],
)
def test_an_inconsistent_signer_is_refused_naming_the_field(signer: dict, field: str) -> None:
    with pytest.raises(ModelRefused, match=re.escape(f"sigstore.{field}")) as exc:
        SigstorePolicy.from_model_settings(_settings({"sigstore": {"signers": [signer]}}))
    assert exc.value.status_code == 400
    # The loader refuses the same signer on its own (gRPC clients other than the runtime).
    if "public_key_pem" not in signer:
        with pytest.raises(BadRequest):
            Signer(**signer).check()


def _refusals(signer: dict) -> tuple[str, str]:
    """What the runtime (reading model-settings.json) and the loader (any gRPC client's request)
    say of the same signer, each after its own way of locating it."""
    with pytest.raises(ModelRefused) as runtime:
        SigstorePolicy.from_model_settings(_settings({"sigstore": {"signers": [signer]}}))
    with pytest.raises(BadRequest) as loader:
        Signer(**signer).check("signers[0]")
    runtime_says = str(runtime.value).split("parameters.extra.sigstore.signers.0", 1)[1]
    return runtime_says, str(loader.value).removeprefix("signers[0]")


@pytest.mark.parametrize(
    "signer",
    [
        {"key": "k", "issuer": "https://i"},
        {"key": "k", "certificate_authority": "c"},
        {"certificate_authority": "c", "workflow_ref": "refs/heads/main"},
        {"identity": "a", "identity_regexp": "a.*", "issuer": "https://i"},
        {"identity_regexp": "a.*"},
        {"identity_regexp": r"(a)\1", "issuer": "https://i"},
        {"identity_regexp": "a" * 1025, "issuer": "https://i"},
        {},
    ],
    ids=["key+issuer", "key+ca", "ca+claim", "identity+regexp", "no-issuer", "backreference", "too-long", "empty"],
)
def test_the_runtime_and_the_loader_refuse_a_signer_with_the_same_message(signer: dict) -> None:
    """The one-kind rule and the RE2 rule are one code (loader.signers), not a copy on each side."""
    runtime_says, loader_says = _refusals(signer)
    assert runtime_says == loader_says
    assert runtime_says.startswith((".", ": "))  # located at the field at fault, or at the signer


def test_the_runtime_and_the_loader_read_the_same_signer_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change to a kind's rule in the contract reaches both sides at once (positive control:
    the key signer is accepted by both before the change)."""
    import loader.signers

    SigstorePolicy.from_model_settings(_settings({"sigstore": {"signers": [{"key": "k"}]}}))
    Signer(key="k").check()

    def refuse(signer: object) -> None:
        raise loader.signers.SignerError("key", "refused by the kind under test")

    kinds = tuple(dataclasses.replace(k, check=refuse) if k.method == "key" else k for k in loader.signers.KINDS)
    monkeypatch.setattr(loader.signers, "KINDS", kinds)
    assert _refusals({"key": "k"}) == (".key: refused by the kind under test",) * 2


@pytest.mark.parametrize("path", ["/etc", "../x", "a/../../b", ""])
def test_ignore_paths_stay_inside_the_model_directory(path: str) -> None:
    with pytest.raises(ModelRefused, match=r"sigstore\.ignore_paths"):
        SigstorePolicy.from_model_settings(
            _settings({"sigstore": {"signers": [{"key": "k"}], "ignore_paths": [path]}})
        )


def _certificate(san: x509.GeneralName, extensions: dict[str, bytes]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(minutes=10))
        .add_extension(x509.SubjectAlternativeName([san]), critical=True)
    )
    for oid, value in extensions.items():
        builder = builder.add_extension(x509.UnrecognizedExtension(ObjectIdentifier(oid), value), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.fixture(scope="module")
def release_cert() -> x509.Certificate:
    return _certificate(
        x509.UniformResourceIdentifier(RELEASE),
        {"1.3.6.1.4.1.57264.1.1": ISSUER.encode(), "1.3.6.1.4.1.57264.1.5": b"acme/models", "1.3.6.1.4.1.57264.1.6": b"refs/tags/v1.4.2"},
    )


@pytest.mark.parametrize(
    ("pattern", "issuer", "repository", "holds"),
    [
        (r"https://github\.com/acme/models/\.github/workflows/release\.yml@refs/tags/v.*", ISSUER, "", True),
        (r"https://github\.com/acme/models/\.github/workflows/release\.yml@refs/tags/v.*", ISSUER, "acme/models", True),
        (r"https://github\.com/acme/models/\.github/workflows/release\.yml@refs/tags/v.*", ISSUER, "acme/other", False),
        (r"https://github\.com/acme/other/.*", ISSUER, "", False),
        (r"release\.yml@refs/tags/v1\.4\.2", ISSUER, "", False),  # a full match, not a search
        (r"https://github\.com/acme/models/.*", "https://accounts.google.com", "", False),
    ],
)
def test_identity_regexp_is_a_sigstore_policy_with_a_full_match_and_an_exact_issuer(
    release_cert: x509.Certificate, pattern: str, issuer: str, repository: str, holds: bool
) -> None:
    policy = keyless_policy(Signer(identity_regexp=pattern, issuer=issuer, workflow_repository=repository))
    if holds:
        policy.verify(release_cert)
    else:
        with pytest.raises(VerificationError):
            policy.verify(release_cert)


def test_certificate_facts_name_identity_issuer_and_claims(release_cert: x509.Certificate) -> None:
    facts = certificate_facts(release_cert)
    assert facts == {"identity": RELEASE, "issuer": ISSUER, "workflow_repository": "acme/models", "workflow_ref": "refs/tags/v1.4.2"}
    assert "workflow_ref='refs/tags/v1.4.2'" in describe_certificate(release_cert)


def test_the_v2_issuer_extension_is_decoded_as_der(release_cert: x509.Certificate) -> None:
    long_issuer = "https://" + "i" * 200  # a DER long-form length
    der = b"\x0c\x81" + bytes([len(long_issuer)]) + long_issuer.encode()
    cert = _certificate(x509.RFC822Name("a@example.com"), {"1.3.6.1.4.1.57264.1.8": der})
    assert certificate_facts(cert) == {"identity": "a@example.com", "issuer": long_issuer}


# --- model-signing manifests, compared in process with what lies in the directory ---


@pytest.fixture(scope="module")
def release_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrustRoots]:
    from loader._internal.keys import SigningKeys

    folder = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "release.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "release.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    roots = TrustRoots({"production": production_root_file()}, "production", SigningKeys({"release": folder / "release.pub"}))
    return folder / "release.key", roots


@pytest.mark.parametrize(
    "hashing",
    [
        {"hashing_algorithm": "sha256"},
        {"hashing_algorithm": "blake2", "shard_size": 1000, "serialization": "shards"},
        {"hashing_algorithm": "blake3"},
    ],
    ids=["sha256-files", "blake2-shards", "blake3-files"],
)
def test_a_directory_manifest_is_matched_file_by_file(tmp_path: Path, release_key: tuple[Path, TrustRoots], hashing: dict) -> None:
    import model_signing

    key, roots = release_key
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.joblib").write_bytes(bytes(range(256)) * 20)
    (model / "sub" / "vocab.txt").write_text("a\nb\n")
    (model / "empty").write_bytes(b"")
    config = model_signing.hashing.Config()
    if hashing.pop("serialization", "files") == "shards":
        config = config.use_shard_serialization(**hashing)
    else:
        config = config.use_file_serialization(**hashing)
    model_signing.signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(config).sign(model, tmp_path / "model.sig")
    bundle = (tmp_path / "model.sig").read_bytes()

    def verify() -> Verified:
        data = (model / "model.joblib").read_bytes()
        return verify_artefact(data, bundle, [Signer(key="release")], roots, directory=model, model_file="model.joblib")

    assert sorted(verify().verified_files) == ["empty", "model.joblib", "sub/vocab.txt"]
    (model / "sub" / "vocab.txt").write_text("a\nc\n")
    with pytest.raises(VerificationFailed, match=r"changed since signing: sub/vocab\.txt"):
        verify()
    (model / "sub" / "vocab.txt").unlink()
    with pytest.raises(VerificationFailed, match=r"signed but missing: sub/vocab\.txt"):
        verify()
    (model / "sub" / "vocab.txt").symlink_to(model / "empty")
    with pytest.raises(VerificationFailed, match="symbolic link"):
        verify()


def test_keys_and_cas_are_checked_at_start_and_picked_by_name(tmp_path: Path, release_key: tuple[Path, TrustRoots]) -> None:
    from loader._internal.keys import KeyConfigError, SigningKeys

    _, roots = release_key
    k1 = ec.generate_private_key(ec.SECP256K1()).public_key()  # not in the OMS v1.0 registry
    (tmp_path / "k1.pub").write_bytes(k1.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "empty.pem").write_text("")
    for keys, authorities, words in [
        ({"k": tmp_path / "missing.pub"}, {}, "does not exist"),
        ({"k": tmp_path / "k1.pub"}, {}, "not an EC P-256, P-384 or P-521 public key"),
        ({}, {"ca": tmp_path / "empty.pem"}, "holds no PEM certificate"),
    ]:
        with pytest.raises(KeyConfigError, match=words):
            SigningKeys(keys, authorities)
    with pytest.raises(BadRequest, match=r"unknown public key 'other'; this loader is configured with \['release'\]"):
        roots.keys.key("other")
    with pytest.raises(BadRequest, match="unknown certificate authority 'acme'"):
        roots.keys.authority("acme")


def test_server_settings_follow_the_environment_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """`RuntimeSettings.current()` is built once per environment, never stale."""
    from runtime.settings import RuntimeSettings

    monkeypatch.delenv("MLSERVER_SIGSTORE_TIMEOUT_SECONDS", raising=False)
    assert RuntimeSettings.current().timeout_seconds == RuntimeSettings().timeout_seconds
    monkeypatch.setenv("MLSERVER_SIGSTORE_TIMEOUT_SECONDS", "7.5")
    first = RuntimeSettings.current()
    assert first.timeout_seconds == 7.5
    first.timeout_seconds = 1.0  # a caller's copy: the next one is unchanged
    assert RuntimeSettings.current().timeout_seconds == 7.5
    monkeypatch.setenv("mlserver_sigstore_endpoint", "unix:///tmp/other.sock")  # as pydantic-settings: any case
    assert RuntimeSettings.current().endpoint == "unix:///tmp/other.sock"
