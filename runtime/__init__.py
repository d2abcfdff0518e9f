"""MLServer runtime for signed scikit-learn models.

Name it in model-settings.json as `"implementation": "runtime.SigstoreModel"`.
"""

from runtime.model import SigstoreModel

__all__ = ["SigstoreModel"]
