"""Build the walkthrough's model repository, fully offline.

Trains the scikit-learn digits SVM, signs it with the real `sigstore` CLI against a local
authority, verifies it with `sigstore verify identity --offline`, and writes three models:
good-model (signed, our runtime), naive-model (tampered file, plain sklearn runtime) and
tampered-model (tampered file, our runtime).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
from sklearn import datasets, svm
from sklearn.model_selection import train_test_split

from authority.oidc import mint_token
from authority.server import AuthorityServer
from authority.state import AuthorityState, init_authority

SIGNER_EMAIL = "model-pipeline@example.com"
# The pickle from the original walkthrough: unpickling it runs `env > pwnd.txt`.
PWND_PICKLE = (
    b"\x80\x04\x95)\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94"
    b"\x8c\x0eenv > pwnd.txt\x94\x85\x94R\x94."
)


def train_digits_svm() -> svm.SVC:
    digits = datasets.load_digits()
    data = digits.images.reshape((len(digits.images), -1))
    x_train, _, y_train, _ = train_test_split(data, digits.target, test_size=0.5, shuffle=False)
    return svm.SVC(gamma=0.001).fit(x_train, y_train)


def _sigstore(*args: str) -> None:
    cli = Path(sys.executable).with_name("sigstore")
    # The CLI prints the whole certificate on signing; keep the output to its verdict lines.
    subprocess.run([str(cli), *args], check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HOME": os.environ.get("HOME", "/tmp")})


def _model_settings(name: str, uri: Path, implementation: str, policy: dict | None) -> dict:
    parameters: dict = {"uri": str(uri)}
    if policy is not None:
        parameters["extra"] = {"sigstore": policy}
    return {"name": name, "implementation": implementation, "parameters": parameters}


def build(root: Path, authority_dir: Path) -> None:
    """Write artefacts/, repo/ and trust/ under `root`.

    The authority (its private keys) lives in `authority_dir`, which must not be under `root`:
    `root` is what the serving side mounts, and a signed hostile model that could read the
    keys could sign anything this deployment accepts.
    """
    if authority_dir.resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"the authority folder {authority_dir} must not be inside the served folder {root}")
    legacy_keys = root / "authority"  # where earlier versions kept the authority: remove it
    if legacy_keys.exists():
        shutil.rmtree(legacy_keys)
        print(f"removed the authority's keys from the served folder ({legacy_keys})")
    marker = root / ".complete"
    if marker.exists():
        print(f"example repository already built in {root}")
        return
    artefacts, repo = root / "artefacts", root / "repo"
    for folder in (artefacts, repo, root / "trust"):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)

    good = artefacts / "good-model" / "model.joblib"
    good.parent.mkdir()
    joblib.dump(train_digits_svm(), good)
    print(f"trained the digits SVM -> {good}")

    ca_dir = authority_dir
    state = AuthorityState.load(ca_dir) if (ca_dir / "authority.json").exists() else init_authority(ca_dir)
    server = AuthorityServer(state)
    server.start_background()
    try:
        trust = str(ca_dir / "trust_config.json")
        _sigstore("--trust-config", trust, "sign", "--overwrite", "--identity-token", mint_token(state, SIGNER_EMAIL), str(good))
        _sigstore(
            "--trust-config", trust, "verify", "identity", "--offline",
            "--bundle", f"{good}.sigstore.json",
            "--cert-identity", SIGNER_EMAIL, "--cert-oidc-issuer", state.issuer, str(good),
        )
        # Like production's signing config, the local one lists a timestamp authority.
        material = json.loads(Path(f"{good}.sigstore.json").read_text())["verificationMaterial"]
        stamps = (material.get("timestampVerificationData") or {}).get("rfc3161Timestamps") or []
        if state.tsa_key is not None and not stamps:
            raise SystemExit("the bundle has no RFC 3161 timestamp although the authority runs a TSA")
        print(f"signed and verified {good} ({len(stamps)} signed timestamp(s))")
    finally:
        server.shutdown()
        server.server_close()
    shutil.copy(ca_dir / "trust_config.json", root / "trust" / "trust_config.json")

    for name in ("naive-model", "tampered-model"):
        target = artefacts / name
        target.mkdir()
        shutil.copy(f"{good}.sigstore.json", target / "model.joblib.sigstore.json")
        (target / "model.joblib").write_bytes(PWND_PICKLE)
    print("wrote naive-model and tampered-model: model.joblib overwritten with a pickle running `env > pwnd.txt`")

    policy = {"signers": [{"identity": SIGNER_EMAIL, "issuer": state.issuer}], "trust_root": "local"}
    models = {
        "good-model": ("runtime.SigstoreModel", policy),
        "naive-model": ("mlserver_sklearn.SKLearnModel", None),
        "tampered-model": ("runtime.SigstoreModel", policy),
    }
    for name, (implementation, model_policy) in models.items():
        folder = repo / name
        folder.mkdir()
        doc = _model_settings(name, artefacts / name / "model.joblib", implementation, model_policy)
        (folder / "model-settings.json").write_text(json.dumps(doc, indent=2) + "\n")
    server_settings = {"load_models_at_startup": False, "debug": False}
    (repo / "settings.json").write_text(json.dumps(server_settings, indent=2) + "\n")
    marker.write_text("ok\n")
    print(f"model repository ready: {repo} (settings), {artefacts} (artefacts)")
