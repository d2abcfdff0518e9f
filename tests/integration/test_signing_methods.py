"""Models signed as they really are: OpenSSF model-signing directories with Sigstore keyless, a
public key and a certificate chain, loaded through `mlserver start` and `python -m loader verify`.

Every directory is signed with the real `model_signing` CLI; the loader knows the keys and CAs
by name only; refused loads must name the cause and never reach the unpickling stage.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sklearn import datasets

from tests.support import (
    PYTHON,
    ROOT,
    Authority,
    LoaderProcess,
    free_port,
    start_loader,
    start_mlserver,
    stop_process,
)

MODEL_SIGNING = str(Path(PYTHON).with_name("model_signing"))
RELEASE = "release+v1.4.2@acme.example"
DIGITS = datasets.load_digits()
SAMPLE = DIGITS.images.reshape((len(DIGITS.images), -1))[-8:]


# --- a small PKI: root CA -> intermediate -> code-signing leaf, twice (ours and another) ----


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _key_pem(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def _issue(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, issuer_key: ec.EllipticCurvePrivateKey, ca: bool, start: datetime.datetime,
    usage: list[x509.ObjectIdentifier] | None = None, lifetime: datetime.timedelta = datetime.timedelta(days=1),
) -> x509.Certificate:
    """A certificate; a leaf's extended key usage is `usage` (default codeSigning, [] for none)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        ).add_extension(x509.SubjectAlternativeName([x509.RFC822Name(f"{subject}@acme.example")]), critical=False)
        usage = [ExtendedKeyUsageOID.CODE_SIGNING] if usage is None else usage
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca: Path  # what the operator trusts: the root only
    leaf: Path
    leaf_key: Path
    chain: Path  # the intermediate, carried in the bundle
    # Leaves under the same intermediate with another extended key usage: name -> (leaf, key).
    other_leaves: dict[str, tuple[Path, Path]]


# Extended key usages of the other leaves: a TLS server certificate, and a leaf without the extension.
OTHER_LEAVES: dict[str, list[x509.ObjectIdentifier]] = {"serverauth": [ExtendedKeyUsageOID.SERVER_AUTH], "no-eku": []}


def _pki(folder: Path, name: str) -> Pki:
    folder.mkdir()
    now = datetime.datetime.now(datetime.timezone.utc)
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _issue(f"{name} root", root_key, None, root_key, True, now - datetime.timedelta(hours=1))
    inter = _issue(f"{name} intermediate", inter_key, root, root_key, True, now - datetime.timedelta(minutes=30))
    leaf = _issue(f"{name}-signer", leaf_key, inter, inter_key, False, now - datetime.timedelta(minutes=5))
    others = {}
    for usage_name, usage in OTHER_LEAVES.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"{name}-{usage_name}", key, inter, inter_key, False, now - datetime.timedelta(minutes=5), usage)
        others[usage_name] = (_pem(folder / f"{usage_name}.pem", cert), _key_pem(folder / f"{usage_name}.key", key))
    # A code-signing leaf whose validity ended a minute ago (OMS v1.0 §8.2).
    key = ec.generate_private_key(ec.SECP256R1())
    expired = _issue(f"{name}-expired", key, inter, inter_key, False, now - datetime.timedelta(minutes=10), lifetime=datetime.timedelta(minutes=9))
    others["expired"] = (_pem(folder / "expired.pem", expired), _key_pem(folder / "expired.key", key))
    return Pki(
        _pem(folder / "ca.pem", root), _pem(folder / "leaf.pem", leaf), _key_pem(folder / "leaf.key", leaf_key),
        _pem(folder / "chain.pem", inter), others,
    )


def _key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1() if name == "release" else ec.SECP256R1())
    public = folder / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return _key_pem(folder / f"{name}.key", key), public


# --- signed model directories ----------------------------------------------------------


@dataclass
class Signed:
    """What the tests need: the PKI files, the signed directories and the running processes."""

    work: Path
    artefacts: Path
    keys: dict[str, Path]
    pkis: dict[str, Pki]
    authority: Authority


def _sign(method: str, model: Path, env: Signed, *args: str) -> None:
    done = subprocess.run(
        [MODEL_SIGNING, "sign", method, *args, "--ignore-paths", str(model / "README.md"), "--signature", str(model / "model.sig"), str(model)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _model_dir(artefacts: Path, name: str, model_bytes: bytes) -> Path:
    model = artefacts / name
    model.mkdir()
    (model / "model.joblib").write_bytes(model_bytes)
    (model / "metadata.json").write_text(json.dumps({"name": name, "trained_on": "digits"}))
    (model / "README.md").write_text("Not covered by the signature (--ignore-paths).\n")
    return model


METHODS = ("sigstore", "key", "certificate")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, authority: Authority, digits_svm_bytes: bytes) -> Signed:
    work = tmp_path_factory.mktemp("signing-methods")
    artefacts = work / "artefacts"
    artefacts.mkdir()
    keys = work / "keys"
    keys.mkdir()
    release_key, release_pub = _key_pair(keys, "release")
    _, other_pub = _key_pair(keys, "other")
    env = Signed(work, artefacts, {"release": release_pub, "other": other_pub}, {"acme": _pki(work / "acme", "acme"), "other": _pki(work / "other", "other")}, authority)
    _sign("sigstore", _model_dir(artefacts, "sigstore", digits_svm_bytes), env,
          "--trust_config", str(authority.trust_config), "--identity_token", authority.token(RELEASE))
    _sign("key", _model_dir(artefacts, "key", digits_svm_bytes), env, "--private_key", str(release_key))
    for name, pki in env.pkis.items():
        folder = "certificate" if name == "acme" else "certificate-other-ca"
        _sign("certificate", _model_dir(artefacts, folder, digits_svm_bytes), env,
              "--private_key", str(pki.leaf_key), "--signing_certificate", str(pki.leaf), "--certificate_chain", str(pki.chain))
    acme = env.pkis["acme"]
    for usage_name, (leaf, leaf_key) in acme.other_leaves.items():
        _sign("certificate", _model_dir(artefacts, f"certificate-{usage_name}", digits_svm_bytes), env,
              "--private_key", str(leaf_key), "--signing_certificate", str(leaf), "--certificate_chain", str(acme.chain))
    return env


POLICIES: dict[str, dict] = {
    "sigstore": {"signers": [{"identity_regexp": r"release\+v[0-9.]+@acme\.example", "issuer": "ISSUER"}]},
    "key": {"signers": [{"key": "release"}]},
    "certificate": {"signers": [{"certificate_authority": "acme"}]},
}


# --- through mlserver start -----------------------------------------------------------


@dataclass
class Stack:
    signed: Signed
    repo: Path
    url: str
    loader: LoaderProcess

    def add(self, name: str, directory: Path, policy: dict) -> None:
        """A model-settings.json for `directory` (the MLServer uri is the directory itself)."""
        folder = self.repo / name
        folder.mkdir()
        policy = json.loads(json.dumps(policy).replace("ISSUER", self.signed.authority.issuer))
        settings = {"name": name, "implementation": "runtime.SigstoreModel", "parameters": {"uri": str(directory), "extra": {"sigstore": policy}}}
        (folder / "model-settings.json").write_text(json.dumps(settings))

    def load(self, name: str) -> requests.Response:
        return requests.post(f"{self.url}/v2/repository/models/{name}/load", timeout=120)

    def infer(self, name: str) -> requests.Response:
        payload = {"inputs": [{"name": "x", "shape": list(SAMPLE.shape), "datatype": "FP64", "data": SAMPLE.flatten().tolist()}]}
        return requests.post(f"{self.url}/v2/models/{name}/infer", json=payload, timeout=60)


def _copy(signed: Signed, source: str, name: str) -> Path:
    """A copy of a signed directory, to be altered by one test."""
    target = signed.artefacts / name
    shutil.copytree(signed.artefacts / source, target, symlinks=True)
    return target


def _changed(d: Path) -> None:
    (d / "metadata.json").write_text(json.dumps({"name": "swapped"}))


def _added(d: Path) -> None:
    (d / "extra.pkl").write_bytes(b"not signed")


def _removed(d: Path) -> None:
    (d / "metadata.json").unlink()


def _symlink(d: Path) -> None:
    (d / "metadata.json").unlink()
    (d / "metadata.json").symlink_to(d.parent / "key" / "metadata.json")


# (directory to copy, alteration, policy, words the refusal must contain)
REFUSED = {
    "changed": ("key", _changed, POLICIES["key"], "changed since signing: metadata.json"),
    "added": ("key", _added, POLICIES["key"], "not covered by the signature: extra.pkl"),
    "removed": ("certificate", _removed, POLICIES["certificate"], "signed but missing: metadata.json"),
    "symlink": ("sigstore", _symlink, POLICIES["sigstore"], "metadata.json in the model directory"),
    "wrong-key": ("key", None, {"signers": [{"key": "other"}]}, "signed by another key"),
    "other-ca": ("certificate-other-ca", None, POLICIES["certificate"], "signed under another CA"),
    # A TLS server certificate under the trusted CA (RFC 5280 4.2.1.12: EKU present, no codeSigning).
    "serverauth-leaf": ("certificate-serverauth", None, POLICIES["certificate"], "extended key usage serverAuth, not codeSigning"),
    "regexp-other-repository": (
        "sigstore", None, {"signers": [{"identity_regexp": r"release\+v[0-9.]+@other-repo\.example", "issuer": "ISSUER"}]},
        f"signed by '{RELEASE}'",
    ),
    "wrong-issuer": (
        "sigstore", None, {"signers": [{"identity": RELEASE, "issuer": "https://accounts.google.com"}]},
        "matches none of the accepted signers",
    ),
}


@pytest.fixture(scope="module")
def stack(signed: Signed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    repo = signed.work / "repo"
    repo.mkdir()
    loader = start_loader(
        tmp_path_factory.mktemp("loader"), signed.artefacts, {"local": signed.authority.trust_config},
        *(f"--public-key={name}={path}" for name, path in signed.keys.items()),
        *(f"--certificate-authority={name}={pki.ca}" for name, pki in signed.pkis.items()),
    )
    cwd = tmp_path_factory.mktemp("mlserver-cwd")
    http = free_port()
    env = {
        "MLSERVER_SIGSTORE_ENDPOINT": loader.endpoint,
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(free_port()),
        "MLSERVER_METRICS_PORT": str(free_port()),
        "MLSERVER_PARALLEL_WORKERS": "0",
        "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
    }
    stack = Stack(signed, repo, f"http://127.0.0.1:{http}", loader)
    for method in METHODS:
        stack.add(f"{method}-model", signed.artefacts / method, POLICIES[method])
    # A leaf without the extended key usage extension is not restricted by it (RFC 5280 4.2.1.12).
    stack.add("certificate-no-eku-model", signed.artefacts / "certificate-no-eku", POLICIES["certificate"])
    # Files the deployment adds beside a signed model are fine once the policy names them.
    beside = _copy(signed, "key", "key-with-notes")
    (beside / "deploy-notes").mkdir()
    (beside / "deploy-notes" / "who.txt").write_text("ops")
    stack.add("key-with-notes-model", beside, {**POLICIES["key"], "ignore_paths": ["deploy-notes"]})
    for case, (source, alter, policy, _) in REFUSED.items():
        directory = signed.artefacts / source
        if alter is not None:
            directory = _copy(signed, source, case)
            alter(directory)
        stack.add(f"{case}-model", directory, policy)
    proc = start_mlserver(repo, cwd, cwd.parent / "mlserver-signing-methods.log", env)
    yield stack
    stop_process(proc)
    stop_process(loader.process)


def _records(loader: LoaderProcess, model: str) -> list[dict]:
    """The loader's JSON log lines for one model (one per VerifyAndLoad)."""
    lines = [json.loads(line) for line in loader.log_text().splitlines() if line.startswith("{")]
    return [record for record in lines if record.get("model") == model]


@pytest.mark.parametrize("method", [*METHODS, "key-with-notes", "certificate-no-eku"])
def test_a_signed_model_directory_loads_and_predicts(stack: Stack, method: str) -> None:
    response = stack.load(f"{method}-model")
    assert response.status_code == 200, response.text
    predicted = stack.infer(f"{method}-model")
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["outputs"][0]["data"] == DIGITS.target[-8:].tolist()
    record = _records(stack.loader, f"{method}-model")[-1]
    assert record["verdict"] == "loaded" and record["stage"] == "unpickle"


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_each_refusal_is_a_4xx_naming_the_cause_before_unpickling(stack: Stack, case: str) -> None:
    response = stack.load(f"{case}-model")
    assert 400 <= response.status_code < 500, response.text
    assert REFUSED[case][3] in response.json()["error"]
    records = _records(stack.loader, f"{case}-model")
    assert records and all(r["verdict"] == "refused" and r["stage"] != "unpickle" for r in records), records
    assert requests.get(f"{stack.url}/v2/health/ready", timeout=5).status_code == 200


# --- python -m loader verify -------------------------------------------------------------


def _verify(signed: Signed, method: str, directory: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = {
        "sigstore": ["--trust-config", str(signed.authority.trust_config), "--cert-identity-regexp", r"release\+v[0-9.]+@acme\.example", "--cert-oidc-issuer", signed.authority.issuer],
        "key": ["--key", str(signed.keys["release"])],
        "certificate": ["--certificate-chain", str(signed.pkis["acme"].ca)],
    }[method]
    return subprocess.run([PYTHON, "-m", "loader", "verify", *flags, *extra, str(directory)], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("method", METHODS)
def test_loader_verify_says_ok_for_each_method_and_names_a_changed_file(signed: Signed, method: str) -> None:
    ok = _verify(signed, method, signed.artefacts / method)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK: {signed.artefacts / method}") and "2 files verified" in ok.stdout
    # The model file of a signed directory verifies too: the whole directory is checked.
    assert _verify(signed, method, signed.artefacts / method / "model.joblib").returncode == 0
    copy = _copy(signed, method, f"cli-{method}")
    data = bytearray((copy / "model.joblib").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.joblib").write_bytes(bytes(data))
    tampered = _verify(signed, method, copy)
    assert tampered.returncode == 1
    assert "changed since signing: model.joblib" in tampered.stderr


def test_loader_verify_refuses_another_key_or_ca_by_name(signed: Signed) -> None:
    wrong_key = subprocess.run(
        [PYTHON, "-m", "loader", "verify", "--key", str(signed.keys["other"]), str(signed.artefacts / "key")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert wrong_key.returncode == 1 and "signed by another key" in wrong_key.stderr
    other_ca = _verify(signed, "certificate", signed.artefacts / "certificate-other-ca")
    assert other_ca.returncode == 1 and "signed under another CA" in other_ca.stderr


def test_loader_verify_refuses_a_leaf_past_its_validity(signed: Signed) -> None:
    """OMS v1.0 §8.2: the leaf must be within its validity period (model_signing checks the chain
    at the leaf's notBefore only, so an expired leaf would pass)."""
    expired = _verify(signed, "certificate", signed.artefacts / "certificate-expired")
    assert expired.returncode == 1, expired.stdout
    assert "OMS v1.0 §8.2: the signing certificate" in expired.stderr and "is not valid now" in expired.stderr


def test_loader_verify_takes_a_code_signing_leaf_only_where_the_leaf_restricts_its_use(signed: Signed) -> None:
    """RFC 5280 4.2.1.12: a leaf with an extended key usage must list codeSigning."""
    server = _verify(signed, "certificate", signed.artefacts / "certificate-serverauth")
    assert server.returncode == 1, server.stdout
    assert "extended key usage serverAuth, not codeSigning" in server.stderr
    assert _verify(signed, "certificate", signed.artefacts / "certificate").returncode == 0  # codeSigning
    no_eku = _verify(signed, "certificate", signed.artefacts / "certificate-no-eku")
    assert no_eku.returncode == 0, no_eku.stderr


def test_a_single_file_sigstore_bundle_still_loads_beside_the_methods(stack: Stack, digits_svm_bytes: bytes) -> None:
    """`sigstore sign` over one file, found as <file>.sigstore.json by the same rule."""
    folder = stack.signed.artefacts / "single-file"
    folder.mkdir()
    (folder / "model.joblib").write_bytes(digits_svm_bytes)
    done = subprocess.run(
        [str(Path(PYTHON).with_name("sigstore")), "--trust-config", str(stack.signed.authority.trust_config), "sign",
         "--identity-token", stack.signed.authority.token(RELEASE), str(folder / "model.joblib")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    stack.add("single-file-model", folder / "model.joblib", POLICIES["sigstore"])
    response = stack.load("single-file-model")
    assert response.status_code == 200, response.text
    assert stack.infer("single-file-model").status_code == 200
