"""Where a bundle sits next to its artefact: the one rule, for the loader and its clients.

A file is signed by `<file>.sigstore.json` (`sigstore sign`), `<file>.sigstore` (sigstore 1.x),
or, when it lies in a directory signed with OpenSSF model signing, by that directory's
`model.sig`. A directory is signed by its `model.sig`; the model file in it is the first of
MLServer's well-known names that exists.
"""

from __future__ import annotations

from pathlib import Path

# Tried in this order: `sigstore sign` writes `.sigstore.json`; sigstore 1.x wrote `.sigstore`.
BUNDLE_SUFFIXES = (".sigstore.json", ".sigstore")
# `model_signing sign` writes this into the model directory.
MODEL_SIGNING_BUNDLE = "model.sig"
# The model file of a directory, as MLServer's scikit-learn runtime looks it up.
WELL_KNOWN_MODEL_FILES = ("model.joblib", "model.pickle", "model.pkl")


def bundle_candidates(artefact: Path) -> list[Path]:
    """The default bundle paths for `artefact` (a file or a model directory), in the order tried."""
    if artefact.is_dir():
        return [artefact / MODEL_SIGNING_BUNDLE]
    own = [artefact.with_name(artefact.name + suffix) for suffix in BUNDLE_SUFFIXES]
    return own + [artefact.with_name(MODEL_SIGNING_BUNDLE)]


def find_bundle(artefact: Path) -> Path | None:
    """The first default bundle of `artefact` that exists, or None."""
    return next((path for path in bundle_candidates(artefact) if path.exists()), None)


def model_file_in(directory: Path) -> Path | None:
    """The model file of a directory (MLServer's well-known names, in its order), or None."""
    return next((directory / name for name in WELL_KNOWN_MODEL_FILES if (directory / name).is_file()), None)


def describe_candidates(artefact: Path) -> str:
    """The default bundle names for `artefact`, for a message saying what was looked for."""
    return " or ".join(path.name for path in bundle_candidates(artefact))
