import pytest
from mlserver.settings import ModelParameters, ModelSettings

from runtime.errors import ModelRefused
from runtime.model import SigstoreModel
from runtime.settings import SigstorePolicy


def _settings(extra: dict | None) -> ModelSettings:
    return ModelSettings(
        name="m", implementation=SigstoreModel, parameters=ModelParameters(uri="/x/model.joblib", extra=extra)
    )


def test_a_valid_policy_parses() -> None:
    policy = SigstorePolicy.from_model_settings(
        _settings({"sigstore": {"signers": [{"identity": "a@example.com", "issuer": "https://i"}], "trust_root": "local"}})
    )
    assert policy.signers[0].identity == "a@example.com"
    assert policy.trust_root == "local"


def test_a_missing_policy_refuses_and_says_where_to_put_it() -> None:
    with pytest.raises(ModelRefused, match=r"parameters\.extra\.sigstore\.signers") as exc:
        SigstorePolicy.from_model_settings(_settings({"predict_fn": "predict"}))
    assert exc.value.status_code == 400


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"signers": []}, "sigstore.signers"),
        ({"signers": [{"identity": "a@example.com"}]}, "sigstore.signers.0.issuer"),
        ({"signers": [{"identity": "", "issuer": "https://i"}]}, "sigstore.signers.0.identity"),
        ({"signers": [{"identity": "a", "issuer": "i"}], "verify": False}, "sigstore.verify"),
        ({"signers": [{"identity": "a", "issuer": "i"}], "sandbox": "none"}, "sigstore.sandbox"),
    ],
)
def test_an_invalid_policy_names_the_field(policy: dict, field: str) -> None:
    with pytest.raises(ModelRefused, match=field.replace(".", r"\.")):
        SigstorePolicy.from_model_settings(_settings({"sigstore": policy}))
