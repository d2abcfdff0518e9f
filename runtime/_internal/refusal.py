"""The one refusal every structural check of the converted model raises (pre-scan and validators)."""

from __future__ import annotations

from runtime.errors import ModelRefused

# Structural refusals are about the model's data, not its types: trusting a type skips no check
# of an allowlisted estimator, so the operator's trusted_types cannot change them.
NOT_A_TYPE_HINT = "trusted_types cannot help: this is a check of the model's data, not of a type"


def refuse(message: str) -> ModelRefused:
    """The 422 every structural refusal of the converted model uses."""
    return ModelRefused(f"the converted model is refused: {message} ({NOT_A_TYPE_HINT})", 422)
