"""The one error a refused load raises; MLServer turns it into an HTTP 4xx/5xx with the reason."""

from __future__ import annotations

import grpc
from mlserver.errors import MLServerError

# How a loader refusal reaches the user of `POST /v2/repository/models/NAME/load`.
HTTP_STATUS_FOR = {
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ModelRefused(MLServerError):
    """The model was not loaded: verification, sandbox or validation refused it."""

    def __init__(self, msg: str, status_code: int = 400, sandbox_ticket: str = "") -> None:
        super().__init__(msg, status_code)
        # The loader kept the verified bytes for Serve (its child could not convert the model).
        self.sandbox_ticket = sandbox_ticket


class PredictFailed(MLServerError):
    """A prediction by a model served in the sandbox failed: bad input (400), the model raised
    (500), its worker crashed, hit a limit or answered outside the checks (502), it is gone (503)
    or ran past its deadline (504). MLServer and the other models carry on."""

    def __init__(self, msg: str, status_code: int = 502) -> None:
        super().__init__(msg, status_code)


# How a Predict failure reaches the caller of `/v2/models/NAME/infer`.
PREDICT_STATUS_FOR = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.NOT_FOUND: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
