"""`runtime.SigstoreModel`: MLServer's scikit-learn runtime, loading only verified models."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from mlserver.utils import get_model_uri
from mlserver_sklearn import SKLearnModel
from mlserver_sklearn.sklearn import WELLKNOWN_MODEL_FILENAMES

from loader.bundles import bundle_candidates, find_bundle
from runtime.client import Consumer, FetchedModel, build_request, verify_and_load
from runtime.docker_sandbox import EphemeralLoader
from runtime.errors import ModelRefused
from runtime.safe_load import load_model
from runtime.settings import RuntimeSettings, SigstorePolicy

logger = logging.getLogger("mlserver.sigstore")
_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".pth")


def refuse_code_beside(folder: Path, what: str) -> None:
    """MLServer imports from the model-settings folder: no Python may sit in it or with artefacts."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    found = sorted(n for n in names if n.endswith(_CODE_SUFFIXES) or n == "__pycache__")
    if found:
        raise ModelRefused(
            f"refusing to load: the {what} {folder} holds Python code {found}; MLServer puts model folders "
            "on sys.path, so keep code out of them (see README, 'Repository layout')",
            403,
        )


class SigstoreModel(SKLearnModel):
    """Drop-in for `mlserver_sklearn.SKLearnModel`: same inputs, outputs and `predict_fn`.

    `load()` never unpickles: the loader verifies the Sigstore bundle and converts the model in
    its sandbox; this process loads the returned skops bytes with a type allowlist.
    """

    async def load(self) -> bool:
        policy = SigstorePolicy.from_model_settings(self._settings)
        env = RuntimeSettings.current()
        artefact = Path(await get_model_uri(self._settings, wellknown_filenames=WELLKNOWN_MODEL_FILENAMES))
        if not artefact.is_file():
            raise ModelRefused(f"model {self.name!r}: no model file found at {artefact}", 404)
        refuse_code_beside(artefact.parent, "artefact folder")
        source = getattr(self._settings, "_source", None)
        if source:
            refuse_code_beside(Path(source).parent, "model-settings folder")

        trusted = policy.trusted_types
        # On a worker thread, from the passed memfd read as a file (its pages are never mapped
        # into this process), while the loader hashes it; kept only if the digest matches.
        fetched = await self._fetch(policy, env, artefact, lambda model_file: load_model(model_file, trusted))
        self._model = fetched.consumed
        facts = fetched.header.facts
        logger.info(
            json.dumps(
                {
                    "event": "sigstore_model_loaded",
                    "model": self.name,
                    "sha256": facts.artefact_sha256,
                    "identity": facts.identity,
                    "issuer": facts.issuer,
                    "log_index": facts.log_index,
                    "cached": fetched.header.cached,
                }
            )
        )
        self.verification = facts
        return True

    async def _fetch(
        self, policy: SigstorePolicy, env: RuntimeSettings, artefact: Path, consume: Consumer
    ) -> FetchedModel:
        mode = policy.sandbox or env.sandbox
        if mode == "endpoint":
            request_path = str(artefact)
            if env.artefacts_root:
                root = Path(env.artefacts_root).resolve()
                if root not in artefact.resolve().parents:
                    raise ModelRefused(f"artefact {artefact} is outside MLSERVER_SIGSTORE_ARTEFACTS_ROOT {root}", 400)
                request_path = str(artefact.resolve().relative_to(root))
            request = build_request(policy, request_path, self.name)
            return await verify_and_load(
                policy.endpoint or env.endpoint, request, env.timeout_seconds, env.max_model_bytes, consume
            )
        if policy.bundle:
            bundle: Path | None = Path(policy.bundle) if Path(policy.bundle).is_absolute() else artefact.parent / policy.bundle
        else:
            bundle = find_bundle(artefact)  # the loader's own rule: .sigstore.json, then .sigstore
        if bundle is None or not bundle.is_file():
            expected = bundle or " or ".join(str(p) for p in bundle_candidates(artefact))
            raise ModelRefused(f"model {self.name!r}: no Sigstore bundle at {expected}", 404)
        sandbox = EphemeralLoader(env, artefact, bundle)
        try:
            endpoint = await sandbox.start()
            await sandbox.wait_ready()
            request = build_request(policy.model_copy(update={"bundle": sandbox.bundle_name}), sandbox.artefact_name, self.name)
            return await verify_and_load(
                endpoint, request, env.timeout_seconds, env.max_model_bytes, consume, reuse_channel=False
            )
        finally:
            await sandbox.stop()
