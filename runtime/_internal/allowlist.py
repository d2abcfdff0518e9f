"""The default allowlist, derived from the validator families (runtime/_internal/validators).

Each family module declares the estimators its validator checks (TYPES) and the parts that only
appear inside them (PARTS); the walk adds the plain value types. Nothing is listed here, so the
allowlist cannot name a type no validator checks. A type named in `trusted_types` but not listed
is loaded unvalidated.
"""

from __future__ import annotations

from runtime._internal.validators import ALLOWLIST, FAMILY_OF, FUNCTIONS
from runtime._internal.validators.common import qualified_name

__all__ = ["ALLOWLIST", "FAMILY_OF", "FUNCTIONS", "qualified_name"]
