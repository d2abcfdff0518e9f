"""Per-model Sigstore policy (model-settings.json) and server-wide defaults (environment)."""

from __future__ import annotations

from typing import Literal

from mlserver.settings import ModelSettings
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.errors import ModelRefused

POLICY_KEY = "sigstore"


class SignerPolicy(BaseModel):
    """One accepted signer. Identity and issuer match exactly, like `sigstore verify identity`."""

    model_config = ConfigDict(extra="forbid")

    identity: str = Field(min_length=1, description="certificate identity (email or URI SAN)")
    issuer: str = Field(min_length=1, description="OIDC issuer URL")
    workflow_repository: str = ""
    workflow_ref: str = ""
    workflow_sha: str = ""
    workflow_name: str = ""
    workflow_trigger: str = ""


class RuntimeSettings(BaseSettings):
    """Server-wide defaults, from `MLSERVER_SIGSTORE_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MLSERVER_SIGSTORE_", extra="ignore")

    sandbox: Literal["endpoint", "docker"] = "endpoint"
    endpoint: str = "unix:///run/loader/loader.sock"
    # If set, artefact paths are sent relative to this folder (the loader's models root).
    artefacts_root: str = ""
    timeout_seconds: float = 120.0
    max_model_bytes: int = 1 << 30
    # docker mode: the loader image, and trust roots to mount into it as NAME=PATH[,NAME=PATH].
    docker_image: str = "mlserver-sigstore/loader:dev"
    docker_trust_configs: str = ""
    docker_start_seconds: float = 60.0


class SigstorePolicy(BaseModel):
    """`parameters.extra.sigstore` in model-settings.json. There is no switch to turn it off."""

    model_config = ConfigDict(extra="forbid")

    signers: list[SignerPolicy] = Field(min_length=1)
    bundle: str | None = Field(default=None, description="bundle path; default <artefact>.sigstore.json")
    trust_root: str = Field(default="", description="name of a trust root configured on the loader")
    trusted_types: list[str] = Field(
        default_factory=list, description="skops types to trust beyond skops' defaults"
    )
    sandbox: Literal["endpoint", "docker"] | None = None
    endpoint: str | None = None

    @classmethod
    def from_model_settings(cls, settings: ModelSettings) -> SigstorePolicy:
        """Parse and validate the policy; refuse the load naming the faulty field."""
        extra = (settings.parameters.extra if settings.parameters else None) or {}
        raw = extra.get(POLICY_KEY)
        if raw is None:
            raise ModelRefused(
                f"model {settings.name!r} has no Sigstore policy: set parameters.extra.{POLICY_KEY}"
                ".signers to at least one {identity, issuer} in model-settings.json",
                status_code=400,
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"parameters.extra.{POLICY_KEY}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors()
            )
            raise ModelRefused(
                f"model {settings.name!r} has an invalid Sigstore policy: {problems}", status_code=400
            ) from None
