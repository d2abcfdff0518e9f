"""Per-model Sigstore policy (model-settings.json) and server-wide defaults (environment)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from mlserver.settings import ModelSettings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from loader.signers import KINDS, SignerError, kind_of
from runtime.errors import ModelRefused

POLICY_KEY = "sigstore"


def _field_error(field: str, reason: str) -> PydanticCustomError:
    """A signer error located at `field` (see `SigstorePolicy.from_model_settings`)."""
    return PydanticCustomError("signer", "{reason}", {"field": field, "reason": reason})


class _OneKindOfSigner(BaseModel):
    """The contract's rule (loader.signers), checked when the model settings are read."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _one_kind(self) -> _OneKindOfSigner:
        try:
            kind_of(self.model_dump())
        except SignerError as exc:
            raise _field_error(exc.field, exc.reason) from None
        return self


if TYPE_CHECKING:
    SignerPolicy = _OneKindOfSigner
else:
    # One accepted signer: the fields of loader.v1.Signer, as the contract's signer kinds declare them.
    SignerPolicy = create_model(
        "SignerPolicy",
        __base__=_OneKindOfSigner,
        __module__=__name__,
        **{name: (str, Field(default="", description=what)) for kind in KINDS for name, what in kind.fields.items()},
    )


def _located(error: ErrorDetails) -> tuple[str, ...]:
    ctx = error.get("ctx") or {}
    return (str(ctx["field"]),) if ctx.get("field") else ()


class RuntimeSettings(BaseSettings):
    """Server-wide defaults, from `MLSERVER_SIGSTORE_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MLSERVER_SIGSTORE_", extra="ignore")

    sandbox: Literal["endpoint", "docker"] = "endpoint"
    endpoint: str = "unix:///run/loader/loader.sock"
    # If set, artefact paths are sent relative to this folder (the loader's models root).
    artefacts_root: str = ""
    timeout_seconds: float = 120.0
    max_model_bytes: int = 1 << 30
    # The largest answer accepted from a model served in the sandbox.
    max_predict_bytes: int = 64 << 20
    # docker mode: the loader image, and trust roots to mount into it as NAME=PATH[,NAME=PATH].
    docker_image: str = "mlserver-sigstore/loader:dev"
    docker_trust_configs: str = ""
    docker_start_seconds: float = 60.0

    @classmethod
    def current(cls) -> RuntimeSettings:
        """The settings for the environment as it is now (built once per distinct environment:
        reading them through pydantic-settings takes most of a millisecond)."""
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        snapshot = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(prefix)))
        found = _RUNTIME_SETTINGS.get(snapshot)
        if found is None:
            found = _RUNTIME_SETTINGS[snapshot] = cls()
            while len(_RUNTIME_SETTINGS) > 8:
                del _RUNTIME_SETTINGS[next(iter(_RUNTIME_SETTINGS))]
        return found.model_copy()


_RUNTIME_SETTINGS: dict[tuple[tuple[str, str], ...], RuntimeSettings] = {}


class SigstorePolicy(BaseModel):
    """`parameters.extra.sigstore` in model-settings.json. There is no switch to turn it off."""

    model_config = ConfigDict(extra="forbid")

    signers: list[SignerPolicy] = Field(min_length=1)
    bundle: str | None = Field(
        default=None, description="bundle path; default <artefact>.sigstore.json, .sigstore, then model.sig"
    )
    ignore_paths: list[str] = Field(
        default_factory=list, description="paths of the model directory (relative to it) the signature excludes"
    )
    trust_root: str = Field(default="", description="name of a trust root configured on the loader")
    trusted_types: list[str] = Field(
        default_factory=list, description="skops types to trust beyond skops' defaults"
    )
    sandbox: Literal["endpoint", "docker"] | None = None
    endpoint: str | None = None
    execution: Literal["auto", "server", "sandbox"] = Field(
        default="auto",
        description="auto: handed back when every type is allowlisted and validates, else served in the loader's "
        "sandbox; server: handed back or refused; sandbox: always served in the sandbox",
    )

    @field_validator("ignore_paths")
    @classmethod
    def _relative(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"{path!r} must be a path relative to the model directory, without '..'")
        return paths

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
                f"parameters.extra.{POLICY_KEY}."
                f"{'.'.join(str(p) for p in (*err['loc'], *_located(err)))}: {err['msg']}"
                for err in exc.errors()
            )
            raise ModelRefused(
                f"model {settings.name!r} has an invalid Sigstore policy: {problems}", status_code=400
            ) from None
