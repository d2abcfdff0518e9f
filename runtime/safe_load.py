"""Load skops bytes from the loader as hostile data: archive pre-scan, narrow allowlist, full validation.

A signed-but-hostile pickle controlled the child that produced these bytes, so nothing here
assumes they are well formed. The steps, each refusing with a 422 that names what is wrong:

1. `check_archive`: one pass over the zip and schema.json before skops parses it (node, depth,
   size and reference caps; the types the schema names).
2. The allowlist (runtime/_internal/allowlist.py) plus the model's `trusted_types` decide; the
   loader only reports types.
3. skops builds and audits its node tree with exactly the approved types trusted (no second type
   scan; runtime/_internal/skops_reader.py reads arrays in place, from the same open archive).
4. Every object in the model is validated by its family's validator (runtime/_internal/validators).
"""

from __future__ import annotations

import sys

from sklearn.base import BaseEstimator
from skops.io.exceptions import UntrustedTypesFoundException

from runtime._internal.allowlist import ALLOWLIST
from runtime._internal.prescan import ScanResult, Source, open_archive, scan, scan_archive
from runtime._internal.skops_reader import SkopsArchive, construct
from runtime._internal.validators import validate_model
from runtime.errors import ModelRefused

TRUST_HINT = (
    "add them to parameters.extra.sigstore.trusted_types only if you trust their code; trusted types "
    "outside the allowlist are loaded without structural validation (see docs/serving-safety.md)"
)


def check_archive(data: Source) -> ScanResult:
    """Refuse archives that are not a bounded, plain skops tree, before skops reads them."""
    return scan_archive(data)


def refuse_types(types: set[str] | list[str], trusted: frozenset[str]) -> None:
    """Refuse, by name, every type outside the allowlist and the operator's trusted types, and
    every function outside the allowlist (trusting cannot add a function: see `_function`)."""
    outside = set(types) - ALLOWLIST
    functions = sorted(name for name in outside if _function(name))
    if functions:
        raise ModelRefused(
            f"the model calls the functions {functions}, which are not accepted in this process; trusted_types "
            "cannot add functions (only NumPy's element-wise functions are accepted, see docs/serving-safety.md): "
            "a model that calls other code must be served in the sandbox",
            422,
        )
    refused = sorted(outside - trusted)
    if refused:
        raise ModelRefused(f"the model holds types outside the allowlist: {refused}; {TRUST_HINT}", 422)


def _function(name: str) -> bool:
    """Whether `name` is a function (not a class) of a module this process has already imported.
    A schema can name a function where a type is expected (skops' TypeNode resolves any
    attribute); nothing is imported to find out."""
    module, _, attribute = name.rpartition(".")
    found = getattr(sys.modules.get(module), attribute, None)
    return callable(found) and not isinstance(found, type)


def load_model(data: Source, trusted_types: list[str] | tuple[str, ...] = ()) -> BaseEstimator:
    """Pre-scan, allowlist, load and validate skops bytes (bytes, bytearray, memoryview, mmap or a
    seekable binary file); raise ModelRefused (422) on any doubt."""
    trusted = frozenset(trusted_types)
    try:
        with open_archive(data, SkopsArchive) as archive:
            found = scan(archive)
            refuse_types(found.types, trusted)
            model = construct(archive, found.schema, sorted(found.types))
    except ModelRefused:
        raise
    except UntrustedTypesFoundException as exc:
        refuse_types(_names_in(str(exc)), trusted)
        raise ModelRefused(f"the model holds types outside the allowlist: {exc}; {TRUST_HINT}", 422) from None
    except RecursionError:
        raise ModelRefused("the converted model could not be loaded by skops: it nests too deeply", 422) from None
    except Exception as exc:  # noqa: BLE001 - malformed archives raise many kinds of errors
        raise ModelRefused(f"the converted model could not be loaded by skops: {type(exc).__name__}: {exc}", 422) from None
    try:
        validate_model(model, trusted)
    except ModelRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile state can trip anything a validator calls
        raise ModelRefused(f"the converted model is refused: validating it failed: {type(exc).__name__}: {exc}", 422) from None
    return model


def _names_in(message: str) -> list[str]:
    start, end = message.find("["), message.rfind("]")
    body = message[start + 1 : end] if 0 <= start < end else ""
    return [part.strip(" '\"") for part in body.split(",") if part.strip(" '\"")]
